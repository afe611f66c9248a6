"""The README's check of which adapter Home Assistant listens on, run against the situations a user meets.

Followed: home-assistant/core homeassistant/components/network/util.py (async_default_next_broadcast_hop,
_first_ip_nexthop_from_route, load_adapters: the adapter holding RTA_PREFSRC of the route to MDNS_TARGET_IP
224.0.0.251 is auto-enabled) and network/const.py (STORAGE_KEY core.network, configured_adapters). Read at
commits 076157ff8163 (util.py) and 08361f8f986d (const.py); that logic is what DESIGN.md states for 2026.11,
which could not be run here (its image needs Python 3.14). The README's snippet is executed with stand-ins for
pyroute2 and ifaddr (the two libraries HA itself uses there) that describe a pod's interfaces and routes."""

import json
import pathlib
import re
import subprocess
import sys

import pytest

from conftest import MANIFESTS

STUBS = '''
import json, os, types, sys
world = json.loads(os.environ["FAKE_NET"])
class IPRoute:
    def route(self, cmd, dst):
        assert cmd == "get" and dst == "224.0.0.251"
        return [{"attrs": [["RTA_OIF", 2], ["RTA_PREFSRC", world["src"]]]}]
pyroute2 = types.ModuleType("pyroute2"); pyroute2.IPRoute = IPRoute
class IP:
    def __init__(self, ip): self.ip = ip
class Adapter:
    def __init__(self, name, ips): self.nice_name = name; self.ips = [IP(i) for i in ips]
ifaddr = types.ModuleType("ifaddr")
ifaddr.get_adapters = lambda: [Adapter(n, ips) for n, ips in world["adapters"].items()]
sys.modules.update(pyroute2=pyroute2, ifaddr=ifaddr)
'''
ADAPTERS = {"lo": ["127.0.0.1"], "eth0": ["10.42.0.17"], "net1": ["192.168.20.205"]}


def readme_snippet():
    text = (MANIFESTS / "README.md").read_text()
    m = re.search(r"kubectl -n home-assistant exec home-assistant-0 -- python3 -c '\n(.*?)'\n", text, re.S)
    assert m, "the README's adapter check is missing"
    return m.group(1)


def run_check(tmp_path, src, configured=None):
    code = readme_snippet()
    store = tmp_path / ".storage" / "core.network"
    if configured is not None:
        store.parent.mkdir(parents=True, exist_ok=True)
        store.write_text(json.dumps({"version": 1, "key": "core.network", "data": {"configured_adapters": configured}}))
    code = code.replace('"/config/.storage/core.network"', json.dumps(str(store)))
    env = {"FAKE_NET": json.dumps({"src": src, "adapters": ADAPTERS}), "PATH": "/usr/bin:/bin"}
    res = subprocess.run([sys.executable, "-c", STUBS + code], capture_output=True, text=True, env=env, timeout=30)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_the_check_names_the_route_source():
    assert '"224.0.0.251"' in readme_snippet() and "RTA_PREFSRC" in readme_snippet()
    assert "homeassistant/components/network/util.py" in readme_snippet()


def test_without_a_multicast_route_via_net1_ha_picks_eth0(tmp_path):
    out = run_check(tmp_path, "10.42.0.17")
    assert "auto-enabled: ['eth0']" in out and "none, so the auto-enabled" in out


def test_with_iotlan_routing_multicast_via_net1_ha_picks_net1(tmp_path):
    out = run_check(tmp_path, "192.168.20.205")
    assert "auto-enabled: ['net1']" in out


def test_the_settings_fallback_shows_as_chosen(tmp_path):
    out = run_check(tmp_path, "10.42.0.17", configured=["eth0", "net1"])
    assert "enabled in Settings: ['eth0', 'net1']" in out
