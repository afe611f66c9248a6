"""The README's check of which adapter Home Assistant listens on, run for real in a network namespace shaped like
HA's pod: `eth0` on the cluster network with the default route, `net1` on the IoT LAN.

Followed: home-assistant/core homeassistant/components/network/util.py, async_get_source_ip (the source address
of a non-blocking UDP socket connected to (MDNS_TARGET_IP, 1)) and async_load_adapters (the ifaddr adapter that
holds that address is `default` and `auto`), and network/const.py (MDNS_TARGET_IP 224.0.0.251, STORAGE_KEY
core.network, configured_adapters). Read in the PyPI release 2026.2.3 (the newest this machine's index holds;
the pinned image is newer and cannot be downloaded here); HA no longer depends on pyroute2 there
(homeassistant/package_constraints.txt). The snippet runs with the pinned ifaddr (HA's constraint, 0.2.0)."""

import json
import os
import re
import shutil
import subprocess
import uuid

import pytest

from conftest import MANIFESTS, TOOLS_VENV, need

POD = {"eth0": "10.42.0.17/24", "net1": "192.168.20.205/24"}


def readme_snippet():
    text = (MANIFESTS / "README.md").read_text()
    m = re.search(r"kubectl -n home-assistant exec home-assistant-0 -- python3 -c '\n(.*?)'\n", text, re.S)
    assert m, "the README's adapter check is missing"
    return m.group(1)


def test_the_check_uses_has_own_method():
    code = readme_snippet()
    assert 's.connect(("224.0.0.251", 1))' in code and "getsockname()[0]" in code
    assert "homeassistant/components/network/util.py" in code
    assert "pyroute2" not in code, "HA's image does not ship pyroute2"


def ip(*args, netns=None):
    cmd = ["ip"] + (["-n", netns] if netns else []) + list(args)
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, f"{' '.join(cmd)}: {res.stderr}"


@pytest.fixture
def pod_netns():
    """A pod-like namespace: eth0 (default route via 10.42.0.1) and net1, each a veth whose peer sits in a second
    namespace this test owns. Nothing of the host's network is touched."""
    need(os.geteuid() == 0 and shutil.which("ip"), "needs root and ip (iproute2) for network namespaces")
    python = TOOLS_VENV / "bin/python"
    need(python.exists() and subprocess.run([str(python), "-c", "import ifaddr"]).returncode == 0,
         f"ifaddr missing in {TOOLS_VENV} (manifests/setup.sh)")
    tag = uuid.uuid4().hex[:6]
    pod, peer = f"ha-pod-{tag}", f"ha-peer-{tag}"
    ip("netns", "add", pod)
    ip("netns", "add", peer)
    try:
        for name, addr in POD.items():
            ip("link", "add", name, "netns", pod, "type", "veth", "peer", "name", f"p-{name}", "netns", peer)
            ip("addr", "add", addr, "dev", name, netns=pod)
            ip("link", "set", name, "up", netns=pod)
            ip("link", "set", f"p-{name}", "up", netns=peer)
        ip("link", "set", "lo", "up", netns=pod)
        ip("route", "add", "default", "via", "10.42.0.1", "dev", "eth0", netns=pod)
        yield pod, str(python)
    finally:
        subprocess.run(["ip", "netns", "del", pod], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", peer], capture_output=True, timeout=30)


def run_check(pod, python, tmp_path, configured=None):
    code = readme_snippet()
    store = tmp_path / ".storage" / "core.network"
    if configured is not None:
        store.parent.mkdir(parents=True, exist_ok=True)
        store.write_text(json.dumps({"version": 1, "key": "core.network",
                                     "data": {"configured_adapters": configured}}))
    code = code.replace('"/config/.storage/core.network"', json.dumps(str(store)))
    res = subprocess.run(["ip", "netns", "exec", pod, python, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_without_a_multicast_route_via_net1_ha_picks_eth0(pod_netns, tmp_path):
    pod, python = pod_netns
    out = run_check(pod, python, tmp_path)
    assert "multicast route source: 10.42.0.17 -> auto-enabled: ['eth0']" in out, out
    assert "none, so the auto-enabled" in out


def test_with_iotlan_routing_multicast_via_net1_ha_picks_net1(pod_netns, tmp_path):
    """What iotlan's multicastRoutes installs: 224.0.0.0/4 via net1 with net1's address as preferred source."""
    pod, python = pod_netns
    ip("route", "add", "224.0.0.0/4", "dev", "net1", "src", "192.168.20.205", netns=pod)
    out = run_check(pod, python, tmp_path)
    assert "multicast route source: 192.168.20.205 -> auto-enabled: ['net1']" in out, out


def test_the_settings_fallback_shows_as_chosen(pod_netns, tmp_path):
    pod, python = pod_netns
    out = run_check(pod, python, tmp_path, configured=["eth0", "net1"])
    assert "enabled in Settings: ['eth0', 'net1']" in out
