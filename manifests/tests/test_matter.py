"""The Matter Server component: the Open Home Foundation's python-matter-server on net1 with IPv6 router
advertisements accepted, a reserved address, and Home Assistant's Matter integration able to reach it.

Followed, python-matter-server 8.1.2 (the PyPI release of the pinned image's tag): matter_server/server/
__main__.py (DEFAULT_PORT 5580, --storage-path, --paa-root-cert-dir, --primary-interface), server/const.py
(DEFAULT_PAA_ROOT_CERTS_DIR inside the installed package), server/server.py (scope_ipv6_lla: link-local addresses
are scoped to the primary interface; without one the host's routing table decides), and the image's Dockerfile
(ENTRYPOINT matter-server, VOLUME /data). Home Assistant homeassistant/components/matter/config_flow.py
(DEFAULT_URL ws://localhost:5580/ws, the URL a user enters in the config flow; PyPI 2026.2.3)."""

import ipaddress
import json
import re

import pytest

from conftest import HA_NAMESPACE, MANIFESTS, TARGETS, one, render

BY_ID = {t.id: t for t in TARGETS}
OVERLAYS = ["home-assistant/overlays/k3s-single-node", "home-assistant/overlays/multi-node"]


def nad_config(docs):
    return json.loads(one(docs, "NetworkAttachmentDefinition", "iot")["spec"]["config"])


@pytest.mark.parametrize("oid", OVERLAYS)
def test_matter_server_on_net1_with_router_advertisements_and_its_reserved_address(oid):
    docs = render(BY_ID[f"{oid} + matter-server"])
    sts = one(docs, "StatefulSet", "matter-server")
    tmpl = sts["spec"]["template"]
    assert tmpl["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"] == "iot"
    cfg = nad_config(docs)
    assert cfg["ipv6"] == {"acceptRA": True, "defaultRoute": False}, "Thread routes via net1, never a default"
    site = json.loads(json.dumps(__import__("yaml").safe_load(
        (MANIFESTS / "home-assistant/components/site/site.yaml").read_text())["spec"]))
    reserved = cfg["ipam"]["reservations"][f"{HA_NAMESPACE}/matter-server-0"]
    assert reserved == site["matterServerLanIp"]
    subnet = ipaddress.ip_network(cfg["ipam"]["subnet"])
    pools = [r.split("-") for r in cfg["ipam"]["pool"]]
    addr = ipaddress.ip_address(reserved)
    assert addr in subnet and not any(ipaddress.ip_address(a) <= addr <= ipaddress.ip_address(b) for a, b in pools)
    assert addr not in {ipaddress.ip_address(v) for k, v in cfg["ipam"]["reservations"].items()
                        if k != f"{HA_NAMESPACE}/matter-server-0"}
    # every other key of the NAD is the one without the component
    without = nad_config(render(BY_ID[oid]))
    assert without["ipv6"] == {"acceptRA": False}
    assert {k: v for k, v in cfg.items() if k != "ipv6"} == {k: v for k, v in without.items() if k != "ipv6"}


def test_matter_server_arguments_follow_its_source():
    docs = render(BY_ID["home-assistant/components/matter-server (on its base)"])
    spec = one(docs, "StatefulSet", "matter-server")["spec"]["template"]["spec"]
    c = spec["containers"][0]
    assert re.fullmatch(r"ghcr\.io/home-assistant-libs/python-matter-server:\d+\.\d+\.\d+", c["image"])
    assert "command" not in c, "the image's ENTRYPOINT is matter-server"
    args = dict(zip(c["args"][::2], c["args"][1::2]))
    assert args["--primary-interface"] == "net1", "link-local addresses must be scoped to the LAN interface"
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert mounts[args["--storage-path"]] == "data"
    assert args["--paa-root-cert-dir"].startswith(args["--storage-path"] + "/"), \
        "the default PAA directory is inside the package, on the read-only root filesystem"
    port = int(args["--port"])
    assert port == 5580 and c["ports"] == [{"name": "ws", "containerPort": port}]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True and mounts["/tmp"] == "tmp"
    svc = one(docs, "Service", "matter-server")
    assert svc["spec"]["ports"][0]["port"] == port and svc["spec"]["ports"][0]["appProtocol"] == "kubernetes.io/ws"
    pol = one(docs, "NetworkPolicy", "matter-server")
    assert pol["spec"]["ingress"] == [{"from": [{"podSelector": {"matchLabels": {
        "app.kubernetes.io/name": "home-assistant"}}}], "ports": [{"port": port}]}]


def test_home_assistant_is_told_the_servers_url():
    """HA's Matter config flow asks for the URL (default ws://localhost:5580/ws, which is HA's own pod here): the
    README gives the Service's URL, and HA's NetworkPolicy lets it out to the server."""
    text = (MANIFESTS / "README.md").read_text()
    assert "ws://matter-server:5580/ws" in text and "Add integration" in text and "Matter" in text
    docs = render(BY_ID["home-assistant/overlays/k3s-single-node + matter-server"])
    assert one(docs, "NetworkPolicy", "home-assistant")["spec"]["egress"] == [{}]
