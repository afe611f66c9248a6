"""Mosquitto's ACL, run for real: Debian's mosquitto on loopback with the rendered mosquitto.conf, the rendered
ACL and the password file create-secrets.sh generates. Each client connects with its generated credentials and
the test watches what reaches whom.

Followed: eclipse/mosquitto man/mosquitto.conf.5.xml (acl_file: `user`, `topic [read|write|readwrite]`; without a
matching rule a client has no access), 2.0.x (the pinned image is 2.0.x; Debian 12's broker here is 2.0.11).
The devices' topics: Tasmota's FullTopic %prefix%/%topic%/ (tele, stat, cmnd) and HA's Tasmota discovery prefix
tasmota/discovery; Shelly Gen1's shellies/<id>/ tree (Gen2+ with that topic prefix set); ESPHome's topic_prefix.
Zigbee2MQTT 2.14.1 subscribes to homeassistant/# (dist/extension/homeassistant.js)."""

import base64
import contextlib
import os
import pathlib
import pwd
import re
import select
import shutil
import socket
import struct
import subprocess
import tempfile
import time

import pytest

from conftest import TARGETS, find, generated_secrets, need, render

BY_ID = {t.id: t for t in TARGETS}


def rendered_files():
    docs = render(BY_ID["home-assistant/overlays/k3s-single-node"])
    cms = [cm for cm in find(docs, "ConfigMap") if "mosquitto.conf" in (cm.get("data") or {})]
    assert len(cms) == 1
    return cms[0]["data"]["mosquitto.conf"], cms[0]["data"]["acl"]


def credentials():
    secrets = generated_secrets()
    out = {}
    for name in ("mqtt-home-assistant", "mqtt-zigbee2mqtt", "mqtt-node-red", "mqtt-devices"):
        d = {k: base64.b64decode(v).decode() for k, v in secrets[name]["data"].items()}
        out[d["username"]] = d["password"]
    return out, base64.b64decode(secrets["mosquitto-passwd"]["data"]["passwd"]).decode()


def _enc(text):
    b = text.encode()
    return struct.pack("!H", len(b)) + b


def _packet(kind, body):
    length, n = b"", len(body)
    while True:
        byte, n = n % 128, n // 128
        length += bytes([byte | (0x80 if n else 0)])
        if not n:
            return bytes([kind]) + length + body


class Client:
    """A minimal MQTT 3.1.1 client: CONNECT, SUBSCRIBE and PUBLISH at QoS 0, and the PUBLISHes it receives."""

    def __init__(self, port, user, password, client_id):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.buf = b""
        body = _enc("MQTT") + bytes([4, 0xC2]) + struct.pack("!H", 30) + _enc(client_id) + _enc(user) + _enc(password)
        self.sock.sendall(_packet(0x10, body))
        kind, payload = self._read()
        assert kind == 0x20 and payload[1] == 0, f"{user}: CONNACK {payload!r}"
        self.packet_id = 0

    def _read(self, timeout=5):
        deadline = time.monotonic() + timeout
        while True:
            if len(self.buf) >= 2:
                mult, length, i = 1, 0, 1
                while i < len(self.buf):
                    length += (self.buf[i] & 0x7F) * mult
                    mult *= 128
                    if not self.buf[i] & 0x80:
                        break
                    i += 1
                if i < len(self.buf) and len(self.buf) >= i + 1 + length:
                    kind, payload = self.buf[0], self.buf[i + 1:i + 1 + length]
                    self.buf = self.buf[i + 1 + length:]
                    return kind, payload
            left = deadline - time.monotonic()
            if left <= 0:
                return None, None
            ready, _, _ = select.select([self.sock], [], [], left)
            if ready:
                chunk = self.sock.recv(4096)
                if not chunk:
                    return None, None
                self.buf += chunk

    def subscribe(self, topic):
        self.packet_id += 1
        self.sock.sendall(_packet(0x82, struct.pack("!H", self.packet_id) + _enc(topic) + b"\x00"))
        kind, payload = self._read()
        assert kind == 0x90, f"no SUBACK for {topic}"
        return payload[2]  # 0 granted, 0x80 refused

    def publish(self, topic, message):
        self.sock.sendall(_packet(0x30, _enc(topic) + message.encode()))

    def received_until(self, sentinel_topic):
        """Topics received up to and including the sentinel (QoS 0 from one publisher keeps its order)."""
        topics = []
        while True:
            kind, payload = self._read()
            assert kind is not None, f"the sentinel {sentinel_topic} never arrived; got {topics}"
            if kind & 0xF0 == 0x30:
                n = struct.unpack("!H", payload[:2])[0]
                topics.append(payload[2:2 + n].decode())
                if topics[-1] == sentinel_topic:
                    return topics[:-1]

    def close(self):
        with contextlib.suppress(OSError):
            self.sock.sendall(b"\xe0\x00")
        self.sock.close()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def broker():
    exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
    need(exe, "mosquitto is not installed (apt package mosquitto)")
    conf, acl = rendered_files()
    creds, passwd = credentials()
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="iotlan-mosquitto-acl-") as tmp:
        tmp = pathlib.Path(tmp)
        (tmp / "data").mkdir()
        for name, text in (("passwd", passwd), ("acl", acl)):
            (tmp / name).write_text(text)
            os.chmod(tmp / name, 0o600)
        text = conf.replace("/mosquitto/auth/passwd", str(tmp / "passwd")).replace("/mosquitto/auth/acl", str(tmp / "acl"))
        text = text.replace("/mosquitto/data/", str(tmp / "data") + "/")
        text = re.sub(r"(?m)^listener 1883$", f"listener {port} 127.0.0.1", text)
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("mosquitto")
                for p in (tmp, tmp / "data", tmp / "passwd", tmp / "acl"):
                    os.chown(p, user.pw_uid, user.pw_gid)
            except KeyError:
                text += "\nuser root\n"
        (tmp / "mosquitto.conf").write_text(text)
        proc = subprocess.Popen([exe, "-c", str(tmp / "mosquitto.conf")], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    assert proc.poll() is None, f"mosquitto exited: {proc.stdout.read()}"
                    assert time.monotonic() < deadline, "mosquitto did not start listening"
                    time.sleep(0.1)
            yield port, creds
        finally:
            proc.terminate()
            proc.communicate(timeout=10)


@contextlib.contextmanager
def clients(port, creds, *users):
    made = [Client(port, u, creds[u], f"test-{u}-{i}") for i, u in enumerate(users)]
    try:
        yield made
    finally:
        for c in made:
            c.close()


def test_devices_publish_their_firmwares_topics_and_nothing_of_ha_or_zigbee2mqtt(broker):
    port, creds = broker
    with clients(port, creds, "homeassistant", "devices") as (ha, device):
        assert ha.subscribe("#") == 0
        allowed = ["tele/tasmota_1A2B3C/STATE", "stat/tasmota_1A2B3C/POWER", "tasmota/discovery/AABBCC112233/config",
                   "shellies/shellyplug-s-1A2B3C/relay/0", "esphome/porch/sensor/temperature/state"]
        denied = ["homeassistant/light/fake/config", "zigbee2mqtt/kitchen_light/set", "cmnd/tasmota_1A2B3C/POWER",
                  "anything/else"]
        for topic in denied + allowed:
            device.publish(topic, "x")
        device.publish("tele/sentinel/LWT", "Online")
        got = ha.received_until("tele/sentinel/LWT")
        assert got == allowed, f"HA received {got}"


def test_devices_receive_commands_but_not_zigbee2mqtt_or_discovery(broker):
    port, creds = broker
    with clients(port, creds, "homeassistant", "zigbee2mqtt", "devices") as (ha, z2m, device):
        for topic in ("cmnd/#", "shellies/#", "esphome/#", "homeassistant/status"):
            assert device.subscribe(topic) == 0, topic
        for topic in ("zigbee2mqtt/#", "homeassistant/#"):
            device.subscribe(topic)  # refused in the SUBACK, or granted and never delivered: both are checked below
        z2m.publish("zigbee2mqtt/bridge/state", "online")
        z2m.publish("homeassistant/light/0x00158d0001/light/config", "{}")
        ha.publish("homeassistant/light/other/config", "{}")
        ha.publish("cmnd/tasmota_1A2B3C/POWER", "ON")
        ha.publish("shellies/shellyplug-s-1A2B3C/relay/0/command", "on")
        ha.publish("homeassistant/status", "online")
        ha.publish("esphome/sentinel", "x")
        got = device.received_until("esphome/sentinel")
        assert got == ["cmnd/tasmota_1A2B3C/POWER", "shellies/shellyplug-s-1A2B3C/relay/0/command",
                       "homeassistant/status"], got


def test_zigbee2mqtt_keeps_to_its_tree_and_has_discovery(broker):
    port, creds = broker
    with clients(port, creds, "homeassistant", "zigbee2mqtt") as (ha, z2m):
        assert ha.subscribe("#") == 0
        assert z2m.subscribe("homeassistant/#") == 0, "Zigbee2MQTT reads the discovery tree to clear stale entries"
        ha.publish("homeassistant/status", "online")
        for topic in ("cmnd/tasmota_1A2B3C/POWER", "shellies/x/relay/0/command", "homeassistant/sensor/0x1/t/config",
                      "zigbee2mqtt/bridge/state"):
            z2m.publish(topic, "x")
        z2m.publish("zigbee2mqtt/sentinel", "x")
        assert ha.received_until("zigbee2mqtt/sentinel") == ["homeassistant/status", "homeassistant/sensor/0x1/t/config",
                                                              "zigbee2mqtt/bridge/state"]
        assert "homeassistant/status" in z2m.received_until("homeassistant/sensor/0x1/t/config")


def test_every_mqtt_user_has_acl_rules():
    """A user without rules could connect and do nothing: each password-file user has its section."""
    _, acl = rendered_files()
    users = re.findall(r"(?m)^user (\S+)$", acl)
    _, passwd = credentials()
    assert sorted(users) == sorted(line.split(":", 1)[0] for line in passwd.splitlines())
    assert not re.search(r"(?m)^pattern ", acl), "no %c/%u patterns: a client id is chosen by the client"
