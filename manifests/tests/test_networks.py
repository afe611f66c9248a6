"""Our own checks of the secondary networks: NAD CNI configs (also through `iotlan validate`) and the
k8s.v1.cni.cncf.io/networks annotations that request them."""

import ipaddress
import json
import os
import pathlib
import re

import pytest
import yaml

from conftest import (HA_NAMESPACE, MANIFESTS, REPO, TARGETS, collect_render, find, need, render, run, workloads)

NETWORKS_ANNOTATION = "k8s.v1.cni.cncf.io/networks"
CNI_VERSIONS = {"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}


def nads(docs):
    return [d for d in docs if d["kind"] == "NetworkAttachmentDefinition"]


ALL_NADS = [(t, n) for t in TARGETS for n in nads(collect_render(t))]
NAD_IDS = [f"{t.id}:{n['metadata']['name']}" for t, n in ALL_NADS]


def cni_config(nad):
    config = nad.get("spec", {}).get("config")
    assert isinstance(config, str), "spec.config must be a JSON string"
    assert set(nad["spec"]) == {"config"}, f"unknown spec keys {set(nad['spec']) - {'config'}}"
    return json.loads(config)


def ip_range(text, subnet):
    first, sep, last = text.partition("-")
    lo = ipaddress.ip_address(first.strip())
    hi = ipaddress.ip_address(last.strip()) if sep else lo
    assert lo in subnet and hi in subnet, f"{text} is not inside {subnet}"
    assert lo <= hi, f"{text}: start after end"
    return lo, hi


def in_ranges(ip, ranges):
    return any(lo <= ip <= hi for lo, hi in ranges)


# ------------------------------------------------------------------------------------- NAD configs


def test_there_are_nads_to_check():
    assert any(n["metadata"]["name"] == "iot" for _, n in ALL_NADS)


@pytest.mark.parametrize("target,nad", ALL_NADS, ids=NAD_IDS)
def test_nad_config_is_sound(target, nad):
    cfg = cni_config(nad)
    assert cfg.get("cniVersion") in CNI_VERSIONS
    assert cfg.get("name") == nad["metadata"]["name"], "the CNI network name should be the NAD's name"
    if cfg.get("type") != "iotlan":
        return
    assert cfg.get("driver", "auto") in {"auto", "macvlan", "ipvlan"}
    assert cfg.get("macvlanMode", "bridge") in {"bridge", "private", "vepa", "passthru"}
    assert cfg.get("ipvlanMode", "l2") == "l2", "ipvlan L3/L3S drop mDNS"
    assert 576 <= cfg.get("mtu", 1500) <= 9216
    probe = cfg.get("probe", {})
    assert isinstance(probe.get("gateway", True), bool) and 0 < probe.get("timeoutMs", 800) <= 10000
    ipam = cfg["ipam"]
    assert ipam["type"] == "iotlan-ipam"
    subnet = ipaddress.ip_network(ipam["subnet"], strict=True)
    gateway = ipaddress.ip_address(ipam["gateway"])
    assert gateway in subnet
    pool = [ip_range(r, subnet) for r in ipam["pool"]]
    assert not in_ranges(gateway, pool), "the gateway must not be handed out"
    for lo, hi in pool:
        assert lo != subnet.network_address and hi != subnet.broadcast_address
    excluded = [ip_range(r, subnet) for r in ipam.get("exclude", [])]
    reserved = {}
    for identity, ip in ipam.get("reservations", {}).items():
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?/[a-z0-9]([-.a-z0-9]*[a-z0-9])?", identity), identity
        addr = ipaddress.ip_address(ip)
        assert addr in subnet and addr not in (gateway, subnet.network_address, subnet.broadcast_address), ip
        assert not in_ranges(addr, excluded), f"{identity} is reserved an excluded address"
        assert addr not in reserved.values(), f"{ip} reserved twice"
        reserved[identity] = addr
    for route in ipam.get("routes", []):
        dst = ipaddress.ip_network(route["dst"])
        assert dst.prefixlen > 0, "never a default route via net1"
    store = ipam["store"]
    assert store["kind"] in {"kubernetes", "file"}
    if store["kind"] == "kubernetes":
        assert store.get("namespace")


@pytest.mark.parametrize("target,nad", ALL_NADS, ids=NAD_IDS)
def test_nad_declares_ips_and_mac_capabilities(target, nad):
    cfg = cni_config(nad)
    if cfg.get("type") == "iotlan":
        assert cfg.get("capabilities") == {"ips": True, "mac": True}


def test_iot_pool_lies_outside_a_typical_router_dhcp_range():
    """Consumer routers hand out .100-.199 (TP-Link), .20-.200 (FRITZ!Box) or .2-.199 style ranges by default;
    the README asks for the router's range to end at .199. The pool and the reservations sit above it."""
    cfg = cni_config(yaml.safe_load((MANIFESTS / "iotlan/network/nad-iot.yaml").read_text()))
    subnet = ipaddress.ip_network(cfg["ipam"]["subnet"])
    dhcp_end = subnet.network_address + 200
    for lo, _ in (ip_range(r, subnet) for r in cfg["ipam"]["pool"]):
        assert lo > dhcp_end
    for ip in cfg["ipam"]["reservations"].values():
        assert ipaddress.ip_address(ip) > dhcp_end


def test_file_store_variant_differs_only_in_the_store():
    """The file-store component fills only the NAD's store slot: every other key is the cluster variant's."""
    by_id = {t.id: t for t in TARGETS}
    base = cni_config(find(render(by_id["iotlan/network"]), "NetworkAttachmentDefinition", "iot")[0])
    single = cni_config(find(render(by_id["iotlan/network/file-store (on its base)"]),
                             "NetworkAttachmentDefinition", "iot")[0])
    assert base["ipam"].pop("store") == {"kind": "kubernetes", "namespace": "iotlan-system"}
    assert single["ipam"].pop("store") == {"kind": "file", "dir": "/var/lib/cni/iotlan"}
    assert base == single


# ---------------------------------------------------------------------------- iotlan's own parser


def iotlan_bin():
    env = os.environ.get("IOTLAN_BIN")
    if env:
        need(pathlib.Path(env).is_file(), f"IOTLAN_BIN={env} does not exist")
        return env
    for candidate in ("target/release/iotlan", "target/debug/iotlan"):
        if (REPO / candidate).is_file():
            return str(REPO / candidate)
    need(False, "no iotlan binary (set IOTLAN_BIN, or cargo build -p iotlan)")


IOTLAN_NADS = [(t, n) for t, n in ALL_NADS if json.loads(n["spec"]["config"]).get("type") == "iotlan"]


@pytest.mark.parametrize("target,nad", IOTLAN_NADS, ids=[f"{t.id}:{n['metadata']['name']}" for t, n in IOTLAN_NADS])
def test_nad_config_passes_iotlan_validate(target, nad):
    res = run([iotlan_bin(), "validate", "-"], input=nad["spec"]["config"])
    assert res.returncode == 0, f"iotlan validate rejected {nad['metadata']['name']}:\n{res.stdout}{res.stderr}"


@pytest.mark.parametrize("field,value", [
    ("subnet", "192.168.20.0"),
    ("pool", ["192.168.30.10-192.168.30.20"]),
    ("gateway", "10.0.0.1"),
])
def test_iotlan_validate_names_the_bad_field(field, value):
    """Negative control: the parser the NADs pass is strict, and says which field is wrong."""
    cfg = cni_config(yaml.safe_load((MANIFESTS / "iotlan/network/nad-iot.yaml").read_text()))
    cfg["ipam"][field] = value
    res = run([iotlan_bin(), "validate", "-"], input=json.dumps(cfg))
    assert res.returncode != 0, f"accepted {field}={value}"
    assert field in res.stdout + res.stderr


# ------------------------------------------------------------------------ networks annotations


def parse_networks(value):
    """Multus's annotation: a JSON list of selection objects, or the comma form `[ns/]name[@ifname], ...`."""
    value = value.strip()
    if value.startswith("["):
        items = json.loads(value)
        assert isinstance(items, list) and all(isinstance(i, dict) and i.get("name") for i in items), value
        return items
    out = []
    for part in value.split(","):
        m = re.fullmatch(r"\s*(?:([a-z0-9-]+)/)?([a-z0-9][-a-z0-9.]*)(?:@([\w.-]+))?\s*", part)
        assert m, f"bad network selection {part!r}"
        item = {"name": m.group(2)}
        if m.group(1):
            item["namespace"] = m.group(1)
        if m.group(3):
            item["interface"] = m.group(3)
        out.append(item)
    return out


def test_parse_networks_forms():
    assert parse_networks("iot") == [{"name": "iot"}]
    assert parse_networks("lan/iot@net1, other") == [
        {"name": "iot", "namespace": "lan", "interface": "net1"}, {"name": "other"}]
    assert parse_networks('[{"name": "iot", "ips": ["192.168.20.205/24"]}]')[0]["ips"] == ["192.168.20.205/24"]
    for bad in ["[{\"ips\": []}]", "Bad Name", "[not json"]:
        with pytest.raises((AssertionError, ValueError)):
            parse_networks(bad)


def pod_identities(obj):
    """namespace/name identities the workload's pods get (StatefulSets have stable ones)."""
    ns = obj["metadata"].get("namespace", "default")
    if obj["kind"] == "StatefulSet":
        return [f"{ns}/{obj['metadata']['name']}-{i}" for i in range(obj["spec"].get("replicas", 1))]
    return []


ANNOTATED = [(t, o, m) for t in TARGETS for o, m, _ in workloads(collect_render(t))
             if NETWORKS_ANNOTATION in (m.get("annotations") or {})]
ANNOTATED_IDS = [f"{t.id}:{o['kind']}/{o['metadata']['name']}" for t, o, _ in ANNOTATED]


def test_some_pods_request_networks():
    names = {o["metadata"]["name"] for _, o, _ in ANNOTATED}
    assert {"home-assistant", "esphome"} <= names


@pytest.mark.parametrize("target,obj,meta", ANNOTATED, ids=ANNOTATED_IDS)
def test_network_annotation_names_existing_nad_and_valid_ips(target, obj, meta):
    docs = render(target)
    pod_ns = obj["metadata"].get("namespace", "default")
    for sel in parse_networks(meta["annotations"][NETWORKS_ANNOTATION]):
        ns = sel.get("namespace", pod_ns)
        found = [n for n in nads(docs) if n["metadata"]["name"] == sel["name"]
                 and n["metadata"].get("namespace", "default") == ns]
        assert found, f"no NetworkAttachmentDefinition {ns}/{sel['name']} in this render"
        cfg = cni_config(found[0])
        if sel.get("ips"):
            assert cfg.get("capabilities", {}).get("ips"), "the NAD must declare the ips capability"
        if sel.get("mac"):
            assert cfg.get("capabilities", {}).get("mac"), "the NAD must declare the mac capability"
        ipam = cfg["ipam"]
        subnet = ipaddress.ip_network(ipam["subnet"])
        pool = [ip_range(r, subnet) for r in ipam.get("pool", [])]
        excluded = [ip_range(r, subnet) for r in ipam.get("exclude", [])]
        reservations = {k: ipaddress.ip_address(v) for k, v in ipam.get("reservations", {}).items()}
        identities = pod_identities(obj)
        for requested in sel.get("ips", []):
            iface = ipaddress.ip_interface(requested)
            ip = iface.ip
            assert ip in subnet, f"{requested} is outside {subnet}"
            if "/" in requested:
                assert iface.network == subnet, f"{requested}: prefix differs from the NAD's {subnet}"
            reserved_for = [k for k, v in reservations.items() if v == ip]
            if reserved_for:
                assert set(reserved_for) <= set(identities), \
                    f"{ip} is reserved for {reserved_for}, but this workload's pods are {identities}"
            else:
                assert in_ranges(ip, pool) and not in_ranges(ip, excluded), f"{ip} is neither reserved nor in the pool"
                assert len(identities) == 1, "a fixed pool address needs exactly one stable pod identity"


HA_OVERLAYS = [t for t in TARGETS if t.is_ha_overlay or t.id == "home-assistant/base"]


@pytest.mark.parametrize("target", HA_OVERLAYS, ids=[t.id for t in HA_OVERLAYS])
def test_home_assistant_requests_its_reserved_address(target):
    docs = render(target)
    ha = [o for o, _, _ in workloads(docs) if o["metadata"]["name"] == "home-assistant"][0]
    meta = ha["spec"]["template"]["metadata"]
    sel = parse_networks(meta["annotations"][NETWORKS_ANNOTATION])
    assert [s["name"] for s in sel] == ["iot"]
    iot = [n for n in nads(docs) if n["metadata"]["name"] == "iot"][0]
    assert iot["metadata"]["namespace"] == HA_NAMESPACE
    # the reservation (found by pod name) is the one place of HA's address; no second copy in the annotation
    reserved = cni_config(iot)["ipam"]["reservations"][f"{HA_NAMESPACE}/home-assistant-0"]
    assert ipaddress.ip_address(reserved) in ipaddress.ip_network(cni_config(iot)["ipam"]["subnet"])
    assert not sel[0].get("ips"), "HA's address belongs in the NAD's reservation only (site.yaml)"


@pytest.mark.parametrize("target", HA_OVERLAYS, ids=[t.id for t in HA_OVERLAYS])
def test_mosquitto_has_a_reserved_lan_address_for_devices(target):
    """LAN devices (Shelly, Tasmota, ESPHome) publish to the broker: it is on net1 with a reserved address of its
    own, distinct from HA's and outside the pool that other pods draw from."""
    docs = render(target)
    sts = [o for o, _, _ in workloads(docs) if o["kind"] == "StatefulSet" and o["metadata"]["name"] == "mosquitto"][0]
    sel = parse_networks(sts["spec"]["template"]["metadata"]["annotations"][NETWORKS_ANNOTATION])
    assert [s["name"] for s in sel] == ["iot"] and not sel[0].get("ips")
    ipam = cni_config(find(docs, "NetworkAttachmentDefinition", "iot")[0])["ipam"]
    mqtt = ipaddress.ip_address(ipam["reservations"][f"{HA_NAMESPACE}/mosquitto-0"])
    ha = ipaddress.ip_address(ipam["reservations"][f"{HA_NAMESPACE}/home-assistant-0"])
    subnet = ipaddress.ip_network(ipam["subnet"])
    pool = [ip_range(r, subnet) for r in ipam["pool"]]
    assert mqtt != ha and mqtt in subnet and not in_ranges(mqtt, pool)


def test_single_node_uses_the_file_store_and_multi_node_the_cluster_store():
    by_id = {t.id: t for t in TARGETS}
    stores = {}
    for overlay in ("k3s-single-node", "multi-node"):
        docs = render(by_id[f"home-assistant/overlays/{overlay}"])
        stores[overlay] = cni_config(find(docs, "NetworkAttachmentDefinition", "iot")[0])["ipam"]["store"]["kind"]
    assert stores == {"k3s-single-node": "file", "multi-node": "kubernetes"}
