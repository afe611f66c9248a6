"""Our own checks of the rendered apps: pinned images, resources, probes, security contexts, secrets kept out
of ConfigMaps, Mosquitto without anonymous access (statically and against a real mosquitto on loopback),
Authelia never in front of Home Assistant, radio pinning, the HA and database specifics."""

import base64
import ipaddress
import os
import pathlib
import pwd
import re
import shutil
import socket
import struct
import subprocess
import tempfile
import time

import pytest
import yaml

from conftest import (HA_NAMESPACE, MANIFESTS, NO_PROBES_ANNOTATION, TARGET_IDS, TARGETS, collect_render,
                      containers, find, generated_secrets, name_of, need, one, pod_template, render, workloads)

HA_TARGETS = [t for t in TARGETS if t.is_home_assistant and t.id != "home-assistant/namespace"]
RADIO_TARGETS = [t for t in HA_TARGETS if t.is_ha_overlay or t.extra is None and t.id.split(" ")[0].endswith(("zigbee2mqtt", "zwave-js-ui"))]
HA_IDS = [t.id for t in HA_TARGETS]
OVERLAYS = {t.id.split("/")[-1]: t for t in TARGETS if t.is_ha_overlay}
RADIO_APPS = {"zigbee2mqtt", "zwave-js-ui"}
RADIO_LABEL = "home-assistant/radio"
AUTHELIA_MIDDLEWARE = "home-assistant-authelia@kubernetescrd"
MIDDLEWARE_ANNOTATION = "traefik.ingress.kubernetes.io/router.middlewares"

# A version tag: digits with dots, optionally v-prefixed and suffixed (-thick, -alpine); or a digest.
PINNED = re.compile(r"^([a-z0-9.-]+(:\d+)?/)?[\w./-]+(:v?\d+(\.\d+)+(-[\w.]+)?)?(@sha256:[0-9a-f]{64})?$")
FLOATING = {"latest", "stable", "edge", "main", "master", "dev", "nightly", "snapshot"}


def is_pinned(image):
    last = image.split("/")[-1]
    if not PINNED.match(image) or not (":" in last or "@sha256:" in image):
        return False
    tag = last.partition(":")[2].split("@")[0]
    return tag.split("-")[0] not in FLOATING and not any(f in tag for f in ("latest", "snapshot"))


def test_pinned_image_rule():
    for good in ["ghcr.io/k8snetworkplumbingwg/multus-cni:v4.3.0-thick", "docker.io/library/postgres:17.6",
                 "iotlan:0.1.0", "localhost:5000/iotlan:0.1.0", "a/b@sha256:" + "0" * 64]:
        assert is_pinned(good), good
    for bad in ["busybox", "busybox:latest", "ghcr.io/a/b:stable", "a/b:snapshot-thick", "a/b:2", "a/b:main"]:
        assert not is_pinned(bad), bad


def app_name(obj):
    return obj["metadata"]["name"]


# ---------------------------------------------------------------------------------- every workload


@pytest.mark.parametrize("target", TARGETS, ids=TARGET_IDS)
def test_every_image_is_pinned(target):
    for obj, _, spec in workloads(render(target)):
        for c, _ in containers(spec):
            assert is_pinned(c["image"]), \
                f"{name_of(obj)}: {c['image']} is not pinned to a version ([registry/]repo:version or a digest)"


@pytest.mark.parametrize("target", TARGETS, ids=TARGET_IDS)
def test_every_container_has_resources(target):
    for obj, _, spec in workloads(render(target)):
        for c, _ in containers(spec):
            res = c.get("resources", {})
            for section in ("requests", "limits"):
                for key in ("cpu", "memory"):
                    assert key in res.get(section, {}), f"{name_of(obj)} {c['name']}: no {section}.{key}"


@pytest.mark.parametrize("target", TARGETS, ids=TARGET_IDS)
def test_every_container_has_probes_or_a_reason(target):
    for obj, meta, spec in workloads(render(target)):
        reason = (meta.get("annotations") or {}).get(NO_PROBES_ANNOTATION) or \
            (obj["metadata"].get("annotations") or {}).get(NO_PROBES_ANNOTATION)
        for c, init in containers(spec):
            if init:
                continue
            if reason:
                assert len(reason.split()) >= 5, f"{name_of(obj)}: {NO_PROBES_ANNOTATION} needs a written reason"
                continue
            assert "livenessProbe" in c, f"{name_of(obj)} {c['name']}: no livenessProbe (or {NO_PROBES_ANNOTATION})"
            assert "readinessProbe" in c, f"{name_of(obj)} {c['name']}: no readinessProbe"


@pytest.mark.parametrize("target", TARGETS, ids=TARGET_IDS)
def test_every_container_has_a_security_context(target):
    for obj, _, spec in workloads(render(target)):
        pod_sc = spec.get("securityContext", {})
        for c, _ in containers(spec):
            sc = c.get("securityContext")
            where = f"{name_of(obj)} {c['name']}"
            assert sc, f"{where}: no securityContext"
            seccomp = sc.get("seccompProfile") or pod_sc.get("seccompProfile")
            assert seccomp and seccomp["type"] == "RuntimeDefault", f"{where}: no RuntimeDefault seccomp profile"
            if sc.get("privileged"):
                skips = " ".join((obj["metadata"].get("annotations") or {}).values())
                assert "CKV_K8S_16=" in skips, f"{where}: privileged without a written reason"
                continue
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
            if obj["metadata"].get("namespace") == HA_NAMESPACE:
                assert sc.get("readOnlyRootFilesystem") is True, where
                assert pod_sc.get("runAsNonRoot") is True, where


# ------------------------------------------------------------------------------------- secrets


SECRETY_KEY = re.compile(r"(pass(word|wd)?|secret|token|api[-_]?key|credential|private[-_]?key)", re.I)
SECRETY_VALUE = [
    re.compile(r"://[^/\s:@]+:[^/\s@]+@"),                                   # user:password@ in a URL
    re.compile(r"^\s*[\w.-]*(password|secret|token)\s*[:=]\s*(?!\s*(!secret|!env_var|GENERATE|$))\S",
               re.I | re.M),                                                  # password: literal
    re.compile(r"\$7\$\d+\$|\$argon2|\$pbkdf2|-----BEGIN [A-Z ]*PRIVATE KEY"),  # hashes and keys
]


@pytest.mark.parametrize("target", TARGETS, ids=TARGET_IDS)
def test_no_secret_values_in_configmaps_or_plain_env(target):
    docs = render(target)
    for cm in find(docs, "ConfigMap"):
        for key, value in (cm.get("data") or {}).items():
            assert not SECRETY_KEY.search(key), f"{name_of(cm)}: key {key} looks like a secret"
            for pattern in SECRETY_VALUE:
                m = pattern.search(value)
                assert not m, f"{name_of(cm)}/{key}: {m.group(0)!r} looks like a secret value"
    for obj, _, spec in workloads(docs):
        for c, _ in containers(spec):
            for env in c.get("env", []):
                if SECRETY_KEY.search(env["name"]) and "value" in env:
                    assert env["name"].endswith("_FILE"), \
                        f"{name_of(obj)} {c['name']}: {env['name']} has a literal value; use a Secret"
    assert not [name_of(s) for s in find(docs, "Secret") if s.get("data") or s.get("stringData")], \
        "Secret values are never committed; manifests/home-assistant/create-secrets.sh makes them"


def test_generated_secret_values_are_not_in_any_configmap():
    """The actual values create-secrets.sh makes never appear in rendered ConfigMaps (a sanity check of the
    secret-shaped patterns above against real data)."""
    values = [base64.b64decode(v).decode() for s in generated_secrets().values() for v in s["data"].values()]
    assert len(values) >= 10
    for t in HA_TARGETS:
        text = "\n".join(str(cm.get("data")) for cm in find(render(t), "ConfigMap"))
        assert not [v for v in values if len(v) >= 16 and v in text]


@pytest.mark.parametrize("target", HA_TARGETS, ids=HA_IDS)
def test_every_referenced_secret_is_made_by_create_secrets(target):
    made = {name: set(s["data"]) for name, s in generated_secrets().items()}
    # Secrets a database operator generates, with the keys it documents
    if find(render(target), "postgresql"):
        made["homeassistant.home-assistant-db.credentials.postgresql.acid.zalan.do"] = {"username", "password"}
    if find(render(target), "Cluster"):
        made["home-assistant-db-app"] = {"username", "password", "host", "port", "dbname", "uri"}
    for obj, _, spec in workloads(render(target)):
        for c, _ in containers(spec):
            for env in c.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in made.get(ref["name"], set()), f"{name_of(obj)}: {ref} is never created"
        for vol in spec.get("volumes", []):
            if "secret" in vol:
                name = vol["secret"]["secretName"]
                assert name in made, f"{name_of(obj)}: Secret {name} is never created"
                for item in vol["secret"].get("items", []):
                    assert item["key"] in made[name]


# ----------------------------------------------------------------------------------- Mosquitto


def mosquitto_conf(docs):
    cms = [cm for cm in find(docs, "ConfigMap") if "mosquitto.conf" in (cm.get("data") or {})]
    assert len(cms) == 1
    return cms[0]["data"]["mosquitto.conf"]


def conf_directives(text):
    return [line.split(None, 1) for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


@pytest.mark.parametrize("target", HA_TARGETS, ids=HA_IDS)
def test_mosquitto_disallows_anonymous_access(target):
    docs = render(target)
    directives = conf_directives(mosquitto_conf(docs))
    keys = [d[0] for d in directives]
    values = {d[0]: d[1].strip() if len(d) > 1 else "" for d in directives}
    assert keys.count("allow_anonymous") == 1 and values["allow_anonymous"] == "false"
    assert values.get("per_listener_settings", "false") == "false", "a per-listener setup needs a per-listener check"
    # `listener 1883` with no bind address: every address of the pod's netns, eth0 (Service) and net1 (LAN devices)
    assert values["listener"] == "1883" and keys.count("listener") == 1 and values["persistence"] == "true"
    assert "bind_interface" not in keys and "bind_address" not in keys
    # the password file sits on the volume the init container fills from the Secret
    sts = one(docs, "StatefulSet", "mosquitto")
    spec = sts["spec"]["template"]["spec"]
    main = spec["containers"][0]
    auth_mount = [m for m in main["volumeMounts"] if values["password_file"].startswith(m["mountPath"] + "/")]
    assert len(auth_mount) == 1
    init = [c for c in spec["initContainers"] if any(m["name"] == auth_mount[0]["name"] for m in c["volumeMounts"])]
    assert init and "chmod 0600" in " ".join(init[0]["command"])
    assert spec["securityContext"]["runAsUser"] == 1883 and spec["securityContext"]["fsGroup"] == 1883
    secret_vol = [v for v in spec["volumes"] if "secret" in v][0]
    assert secret_vol["secret"]["secretName"] == "mosquitto-passwd" and secret_vol["secret"]["defaultMode"] == 0o440
    persist = [m for m in main["volumeMounts"] if values["persistence_location"].rstrip("/") == m["mountPath"]]
    assert persist and persist[0]["name"] in [v["metadata"]["name"] for v in sts["spec"]["volumeClaimTemplates"]]


def mqtt_connect(port, username=None, password=None):
    """Send an MQTT 3.1.1 CONNECT to 127.0.0.1:port; return the CONNACK return code (0 = accepted)."""
    flags = 0x02  # clean session
    payload = struct.pack("!H", 9) + b"test-conn"
    if username is not None:
        flags |= 0x80
        payload += struct.pack("!H", len(username)) + username.encode()
    if password is not None:
        flags |= 0x40
        payload += struct.pack("!H", len(password)) + password.encode()
    variable = struct.pack("!H", 4) + b"MQTT" + bytes([4, flags]) + struct.pack("!H", 30)
    body = variable + payload
    assert len(body) < 128
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(bytes([0x10, len(body)]) + body)
        reply = s.recv(4)
    assert reply[:2] == b"\x20\x02", f"not a CONNACK: {reply!r}"
    return reply[3]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mosquitto_config_refuses_anonymous_clients_for_real():
    """Runs Debian's mosquitto with the rendered mosquitto.conf (paths and port moved to a temp dir on
    loopback) and the password file create-secrets.sh generates, owned by the broker's user with mode 0600
    as the init container leaves it. Anonymous and wrong-password clients are refused; Zigbee2MQTT's
    generated credentials are accepted. (Newer brokers, 2.0.16 on, also warn about a password file's owner and
    mode; Debian 12's 2.0.11 does not, so the owner/mode rule is checked statically in the test above.)"""
    broker = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
    need(broker, "mosquitto is not installed (apt package mosquitto)")
    docs = render(OVERLAYS["k3s-single-node"])
    conf = mosquitto_conf(docs)
    acl = [cm for cm in find(docs, "ConfigMap") if "acl" in (cm.get("data") or {})][0]["data"]["acl"]
    secrets = generated_secrets()
    passwd = base64.b64decode(secrets["mosquitto-passwd"]["data"]["passwd"]).decode()
    z2m = {k: base64.b64decode(v).decode() for k, v in secrets["mqtt-zigbee2mqtt"]["data"].items()}
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="iotlan-mosquitto-") as tmp:
        tmp = pathlib.Path(tmp)
        (tmp / "data").mkdir()
        (tmp / "passwd").write_text(passwd)
        os.chmod(tmp / "passwd", 0o600)
        (tmp / "acl").write_text(acl)
        os.chmod(tmp / "acl", 0o600)
        text = conf.replace("/mosquitto/auth/passwd", str(tmp / "passwd")).replace("/mosquitto/auth/acl", str(tmp / "acl"))
        text = text.replace("/mosquitto/data/", str(tmp / "data") + "/")
        text = re.sub(r"(?m)^listener 1883$", f"listener {port} 127.0.0.1", text)
        if os.geteuid() == 0:  # the broker drops root to its own user, which must own the files (as in the pod)
            try:
                user = pwd.getpwnam("mosquitto")
            except KeyError:
                user = None
            if user:
                for p in (tmp, tmp / "data", tmp / "passwd", tmp / "acl"):
                    os.chown(p, user.pw_uid, user.pw_gid)
            else:
                text += "\nuser root\n"
        (tmp / "mosquitto.conf").write_text(text)
        proc = subprocess.Popen([broker, "-c", str(tmp / "mosquitto.conf")],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
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
            assert mqtt_connect(port) == 5, "an anonymous client was accepted"
            assert mqtt_connect(port, z2m["username"], "wrong") in (4, 5)
            assert mqtt_connect(port, "nobody", z2m["password"]) in (4, 5)
            assert mqtt_connect(port, z2m["username"], z2m["password"]) == 0
        finally:
            proc.terminate()
            out, _ = proc.communicate(timeout=10)
    assert "world readable" not in out and "owner is not" not in out, out


# ------------------------------------------------------------------------------------- Authelia


AUTHELIA_FILTER = {"type": "ExtensionRef", "extensionRef": {"group": "traefik.io", "kind": "Middleware",
                                                             "name": "authelia"}}


def authelia_guarded(route):
    """An Ingress naming Traefik's Authelia Middleware, or an HTTPRoute whose every rule filters through it."""
    if route["kind"] == "HTTPRoute":
        return all(AUTHELIA_FILTER in r.get("filters", []) for r in route["spec"]["rules"])
    ann = route["metadata"].get("annotations") or {}
    return AUTHELIA_MIDDLEWARE in ann.get(MIDDLEWARE_ANNOTATION, "").split(",")


def route_hosts(route):
    return route["spec"]["hostnames"] if route["kind"] == "HTTPRoute" else [r["host"] for r in route["spec"]["rules"]]


def authelia_template(text, env):
    """Authelia's template file filter, for the one function configuration.yml uses: {{ env "NAME" }}."""
    out = re.sub(r"\{\{\s*env\s+\"(\w+)\"\s*\}\}", lambda m: env[m.group(1)], text)
    assert "{{" not in out, "configuration.yml uses a template function this test does not know"
    return out


@pytest.mark.parametrize("target", HA_TARGETS, ids=HA_IDS)
def test_authelia_guards_every_ui_but_never_home_assistant(target):
    docs = render(target)
    ingresses = find(docs, "Ingress") + find(docs, "HTTPRoute")
    assert not (find(docs, "Ingress") and find(docs, "HTTPRoute")), "one way in, not two"
    for ing in ingresses:
        name = ing["metadata"]["name"]
        if name in ("home-assistant", "authelia"):
            assert not authelia_guarded(ing), f"{name} must never sit behind Authelia"
        else:
            assert authelia_guarded(ing), f"the {name} UI is not behind Authelia"
    guarded = {i["metadata"]["name"] for i in ingresses if i["metadata"]["name"] not in ("home-assistant", "authelia")}
    assert {"zigbee2mqtt", "zwave-js-ui"} & {i["metadata"]["name"] for i in ingresses} <= guarded
    if not find(docs, "StatefulSet", "authelia"):
        return
    mw = one(docs, "Middleware", "authelia")
    assert f"{mw['metadata']['namespace']}-{mw['metadata']['name']}@kubernetescrd" == AUTHELIA_MIDDLEWARE
    assert mw["apiVersion"] == "traefik.io/v1alpha1" and set(mw["spec"]) == {"forwardAuth"}
    address = mw["spec"]["forwardAuth"]["address"]
    m = re.fullmatch(r"http://([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local:(\d+)/api/authz/([a-z-]+)", address)
    assert m, address
    svc = one(docs, "Service", m.group(1))
    assert svc["metadata"]["namespace"] == m.group(2)
    assert int(m.group(3)) in [p["port"] for p in svc["spec"]["ports"]]
    sts = one(docs, "StatefulSet", "authelia")
    env = {e["name"]: e.get("value") for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["X_AUTHELIA_CONFIG_FILTERS"] == "template"
    raw = one(docs, "ConfigMap", find_cm_name(docs, "authelia-config"))["data"]["configuration.yml"]
    config = yaml.safe_load(authelia_template(raw, env))
    assert m.group(4) in config["server"]["endpoints"]["authz"], f"Authelia has no {m.group(4)} endpoint"
    protected = {d for rule in config["access_control"]["rules"] for d in rule["domain"]}
    hosts = {h: i["metadata"]["name"] for i in ingresses for h in route_hosts(i)}
    assert {h for h, n in hosts.items() if n in guarded} <= protected
    assert not [h for h, n in hosts.items() if n == "home-assistant" and h in protected]
    assert config["access_control"]["default_policy"] == "deny"
    cookie = config["session"]["cookies"][0]
    auth_host = [h for h, n in hosts.items() if n == "authelia"][0]
    assert cookie["authelia_url"] == f"https://{auth_host}" and all(h.endswith("." + cookie["domain"]) for h in hosts)


def find_cm_name(docs, prefix):
    names = [cm["metadata"]["name"] for cm in find(docs, "ConfigMap") if cm["metadata"]["name"].startswith(prefix)]
    assert len(names) == 1, names
    return names[0]


# -------------------------------------------------------------------------------- radios and nodes


def site_settings():
    return yaml.safe_load((MANIFESTS / "home-assistant/components/site/site.yaml").read_text())["spec"]


def required_node_expressions(spec):
    terms = (spec.get("affinity", {}).get("nodeAffinity", {})
             .get("requiredDuringSchedulingIgnoredDuringExecution", {}).get("nodeSelectorTerms", []))
    return [e for term in terms for e in term.get("matchExpressions", [])]


@pytest.mark.parametrize("target", RADIO_TARGETS, ids=[t.id for t in RADIO_TARGETS])
def test_radio_apps_use_by_id_devices_with_stated_access(target):
    docs = render(target)
    for name in RADIO_APPS:
        if not find(docs, "StatefulSet", name):
            continue
        sts = one(docs, "StatefulSet", name)
        spec = sts["spec"]["template"]["spec"]
        radios = [v for v in spec["volumes"] if "hostPath" in v]
        assert len(radios) == 1 and radios[0]["hostPath"]["path"].startswith("/dev/serial/by-id/")
        assert radios[0]["hostPath"]["type"] == "CharDevice"
        container = spec["containers"][0]
        assert container["securityContext"]["privileged"] is True
        assert len(spec["securityContext"]["supplementalGroups"]) == 1, "the dialout group (site.yaml dialoutGid)"
        reason = " ".join((sts["metadata"].get("annotations") or {}).values())
        assert "device cgroup" in reason


def test_base_and_multi_node_pin_radios_to_the_tainted_radio_node():
    """The radio apps need the node label (any value) and tolerate the taint key with any effect: the seed's
    Pi is tainted NoExecute, which a NoSchedule-only toleration would not cover."""
    by_id = {t.id: t for t in TARGETS}
    for tid in ("home-assistant/components/zigbee2mqtt (on its base)", "home-assistant/components/zwave-js-ui (on its base)",
                "home-assistant/overlays/multi-node"):
        docs = render(by_id[tid])
        for obj, _, spec in workloads(docs):
            tolerates = [t for t in spec.get("tolerations", []) if t.get("key") == RADIO_LABEL]
            if app_name(obj) in RADIO_APPS:
                assert {"key": RADIO_LABEL, "operator": "Exists"} in required_node_expressions(spec)
                assert tolerates == [{"key": RADIO_LABEL, "operator": "Exists"}], "any value, any effect"
                assert "nodeSelector" not in spec, "the label pins them, on a node of any architecture"
            else:
                assert not tolerates, f"{name_of(obj)} must not tolerate the radio node's taint"
                if tid.endswith("multi-node") and obj["kind"] in ("Deployment", "StatefulSet"):
                    assert {"key": RADIO_LABEL, "operator": "DoesNotExist"} in required_node_expressions(spec), \
                        name_of(obj)


def test_single_node_needs_no_labels_and_uses_local_path():
    docs = render(OVERLAYS["k3s-single-node"])
    for obj, _, spec in workloads(docs):
        assert "nodeSelector" not in spec and "tolerations" not in spec, name_of(obj)
        assert not required_node_expressions(spec), name_of(obj)
    claims = [c for s in find(docs, "StatefulSet") for c in s["spec"].get("volumeClaimTemplates", [])]
    claims += find(docs, "PersistentVolumeClaim")
    assert claims and all(c["spec"].get("storageClassName") == "local-path" for c in claims)


@pytest.mark.parametrize("target", HA_TARGETS, ids=HA_IDS)
def test_everything_lives_in_the_home_assistant_namespace(target):
    for obj in render(target):
        if obj["kind"] not in ("Namespace",):
            assert obj["metadata"].get("namespace") == HA_NAMESPACE, name_of(obj)


# ------------------------------------------------------------------------------- Home Assistant


@pytest.mark.parametrize("target", HA_TARGETS, ids=HA_IDS)
def test_home_assistant_statefulset(target):
    docs = render(target)
    sts = one(docs, "StatefulSet", "home-assistant")
    spec = sts["spec"]["template"]["spec"]
    ha = spec["containers"][0]
    budget = lambda p: p.get("initialDelaySeconds", 0) + p.get("periodSeconds", 10) * p.get("failureThreshold", 3)
    assert budget(ha["startupProbe"]) >= 600, "recorder migrations need a start-up budget of at least 10 minutes"
    assert budget(ha["livenessProbe"]) >= 120 and ha["livenessProbe"].get("timeoutSeconds", 1) >= 5
    assert "httpGet" not in ha["livenessProbe"] or ha["livenessProbe"]["httpGet"]["path"] == "/"
    # recorder db_url from a Secret (create-secrets.sh's, or the one a database operator generates)
    env = {e["name"]: e for e in ha["env"]}
    names = [e["name"] for e in ha["env"]]
    url = env["HA_RECORDER_DB_URL"]
    if find(docs, "postgresql"):  # zalando: built from the operator's credentials Secret with $(VAR) expansion
        cred = "homeassistant.home-assistant-db.credentials.postgresql.acid.zalan.do"
        for var, key in (("HA_DB_USERNAME", "username"), ("HA_DB_PASSWORD", "password")):
            assert env[var]["valueFrom"]["secretKeyRef"] == {"name": cred, "key": key}
            assert names.index(var) < names.index("HA_RECORDER_DB_URL"), "$(VAR) only expands earlier variables"
        assert url["value"] == "postgresql://$(HA_DB_USERNAME):$(HA_DB_PASSWORD)@home-assistant-db:5432/homeassistant"
    elif find(docs, "Cluster"):  # CloudNativePG: the app Secret carries a ready URI
        assert url["valueFrom"]["secretKeyRef"] == {"name": "home-assistant-db-app", "key": "uri"}
    else:
        assert url["valueFrom"]["secretKeyRef"] == {"name": "home-assistant-db", "key": "db-url"}
    includes = one(docs, "ConfigMap", "home-assistant-includes")
    recorder = includes["data"]["recorder.yaml"]
    assert re.search(r"(?m)^db_url: !env_var HA_RECORDER_DB_URL$", recorder)
    # includes are a directory mount (no subPath), linked into /config by the init container
    inc_vol = [v["name"] for v in spec["volumes"] if v.get("configMap", {}).get("name") == "home-assistant-includes"]
    for c in spec["initContainers"] + spec["containers"]:
        for m in c.get("volumeMounts", []):
            assert "subPath" not in m, f"{c['name']}: subPath mounts do not follow ConfigMap updates"
    assert any(m["name"] in inc_vol for m in spec["initContainers"][0]["volumeMounts"])
    seed = one(docs, "ConfigMap", find_cm_name(docs, "home-assistant-seed"))["data"]
    assert "ln -s" in seed["init.sh"] and "/config/.storage/http" in seed["init.sh"]
    http = __import__("json").loads(seed["http.json"])  # test_ha_http_store.py checks it against HA's loader
    for proxy in http["data"]["stable"]["trusted_proxies"]:
        ipaddress.ip_network(proxy)
    assert "!include k8s/recorder.yaml" in seed["configuration.yaml"]
    # service, ingress, PDB
    svc = one(docs, "Service", "home-assistant")
    assert svc["spec"]["ports"][0]["appProtocol"] == "kubernetes.io/ws"
    if "gateway-api" in target.id:
        route = one(docs, "HTTPRoute", "home-assistant")
        assert route["spec"]["rules"][0]["backendRefs"] == [{"name": "home-assistant", "port": 8123}]
    else:
        assert one(docs, "Ingress", "home-assistant")["spec"]["ingressClassName"] == "traefik"
    pdb = one(docs, "PodDisruptionBudget", "home-assistant")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "config"


@pytest.mark.parametrize("target", HA_TARGETS, ids=HA_IDS)
def test_postgres_init_and_nightly_backup(target):
    docs = render(target)
    if find(docs, "postgresql") or find(docs, "Cluster"):  # an operator's database: the built-in one is gone
        assert not find(docs, "StatefulSet", "postgres") and not find(docs, "CronJob", "postgres-backup")
        return
    initdb = one(docs, "ConfigMap", find_cm_name(docs, "postgres-initdb"))["data"]["10-home-assistant.sh"]
    assert "CREATE ROLE" in initdb and "CREATE DATABASE" in initdb and "OWNER" in initdb
    assert "/run/secrets/ha-db/password" in initdb
    cron = one(docs, "CronJob", "postgres-backup")
    minute, hour, dom, month, dow = cron["spec"]["schedule"].split()
    assert (dom, month, dow) == ("*", "*", "*") and hour.isdigit() and minute.isdigit(), "nightly"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    _, spec = pod_template(cron)
    c = spec["containers"][0]
    script = " ".join(c["command"] + c.get("args", []))
    assert "pg_dump" in script and "BACKUP_KEEP" in script and "pg_restore --list" in script
    keep = {e["name"]: e.get("value") for e in c["env"]}["BACKUP_KEEP"]
    assert int(keep) >= 7
    claim = [v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"] if "persistentVolumeClaim" in v]
    assert claim == ["postgres-backup"] and one(docs, "PersistentVolumeClaim", "postgres-backup")


@pytest.mark.parametrize("target", RADIO_TARGETS, ids=[t.id for t in RADIO_TARGETS])
def test_zigbee2mqtt_skips_onboarding_and_takes_secrets_from_env(target):
    docs = render(target)
    if not find(docs, "StatefulSet", "zigbee2mqtt"):
        return
    seed = yaml.safe_load(one(docs, "ConfigMap", find_cm_name(docs, "zigbee2mqtt-seed"))["data"]["configuration.yaml"])
    assert seed["onboarding"] is False
    assert "password" not in seed["mqtt"] and "user" not in seed["mqtt"]
    assert seed["frontend"]["port"] == 8080
    sts = one(docs, "StatefulSet", "zigbee2mqtt")
    spec = sts["spec"]["template"]["spec"]
    env = {e["name"]: e for e in spec["containers"][0]["env"]}
    for var in ("ZIGBEE2MQTT_CONFIG_MQTT_USER", "ZIGBEE2MQTT_CONFIG_MQTT_PASSWORD"):
        assert env[var]["valueFrom"]["secretKeyRef"]["name"] == "mqtt-zigbee2mqtt"
    init = " ".join(spec["initContainers"][0]["command"])
    assert "[ -s /app/data/configuration.yaml ]" in init, "seed only when the file is missing or empty"
    assert seed["serial"]["port"] in [m["mountPath"] for m in spec["containers"][0]["volumeMounts"]]


@pytest.mark.parametrize("target", RADIO_TARGETS, ids=[t.id for t in RADIO_TARGETS])
def test_zwave_js_ui_ports_and_session_secret(target):
    docs = render(target)
    if not find(docs, "StatefulSet", "zwave-js-ui"):
        return
    sts = one(docs, "StatefulSet", "zwave-js-ui")
    c = sts["spec"]["template"]["spec"]["containers"][0]
    assert {p["containerPort"] for p in c["ports"]} == {8091, 3000}
    env = {e["name"]: e for e in c["env"]}
    assert env["SESSION_SECRET"]["valueFrom"]["secretKeyRef"]["name"] == "zwave-js-ui"
    # Z-Wave JS UI's /health is 500 until a Z-Wave driver AND an MQTT client exist (zwave-js/zwave-js-ui
    # api/app.ts, the `app.get('/health', ...)` handler, read at commit 003bd0c8d435 for image 11.19.1): on a
    # fresh install, before the serial port is set in the UI, it never passes. Every probe is TCP on 8091.
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe].get("tcpSocket", {}).get("port") in ("http", 8091), f"{probe} must be TCP on 8091"
        assert "httpGet" not in c[probe]
    assert {p["port"] for p in one(docs, "Service", "zwave-js-ui")["spec"]["ports"]} == {8091, 3000}
    store = [m for m in c["volumeMounts"] if m["mountPath"] == "/usr/src/app/store"]
    assert store and store[0]["name"] in [v["metadata"]["name"] for v in sts["spec"]["volumeClaimTemplates"]]


def test_opt_in_components_are_wired():
    docs = render(OVERLAYS["multi-node"])
    for name, port in (("piper", 10200), ("whisper", 10300)):
        dep = one(docs, "Deployment", name)
        spec = dep["spec"]["template"]["spec"]
        assert spec["containers"][0]["ports"][0]["containerPort"] == port
        data = [v for v in spec["volumes"] if v["name"] == "data"][0]
        assert "emptyDir" in data or "ephemeral" in data, "model data goes on an ephemeral volume"
    esphome = one(docs, "StatefulSet", "esphome")
    assert esphome["spec"]["template"]["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"] == "iot"
    assert one(docs, "StatefulSet", "node-red")["spec"]["template"]["spec"]["containers"][0]["ports"][0][
        "containerPort"] == 1880
    code = one(docs, "Deployment", "code-server")["spec"]["template"]["spec"]
    claim = [v["persistentVolumeClaim"]["claimName"] for v in code["volumes"] if "persistentVolumeClaim" in v]
    assert claim == ["config-home-assistant-0"], "code-server edits HA's own config volume"
    ha_sel = code["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert ha_sel["labelSelector"]["matchLabels"] == {"app.kubernetes.io/name": "home-assistant"}


# ---------------------------------------------------------------------------------- NetworkPolicies


@pytest.mark.parametrize("target", HA_TARGETS, ids=HA_IDS)
def test_network_policies_default_deny_and_select_every_app(target):
    docs = render(target)
    policies = find(docs, "NetworkPolicy")
    deny = one(docs, "NetworkPolicy", "default-deny")
    assert deny["spec"]["podSelector"] == {} and set(deny["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny["spec"] and "egress" not in deny["spec"]
    for obj, meta, _ in workloads(docs):
        labels = meta.get("labels", {})
        own = [p for p in policies if p["spec"]["podSelector"].get("matchLabels")
               and p["spec"]["podSelector"]["matchLabels"].items() <= labels.items()]
        assert own, f"{name_of(obj)} has no NetworkPolicy of its own"
