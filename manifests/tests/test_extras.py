"""The one file of addresses (components/site), the Gateway API and cert-manager options, Bluetooth, the database operators,
Flux, the SOPS-ready Secrets, the /config backup and SELinux: what a user would check after rendering."""

import ipaddress
import json
import os
import pathlib
import shutil
import subprocess
import tempfile

import pytest
import yaml

from conftest import (HA_NAMESPACE, MANIFESTS, TARGETS, find, generated_secret_files, name_of, need, one, render,
                      render_text, run, tool, workloads)

BY_ID = {t.id: t for t in TARGETS}
OVERLAY_IDS = ["home-assistant/overlays/k3s-single-node", "home-assistant/overlays/multi-node"]
CHANGED = {  # site.yaml values a user might have, none of them equal to an example value
    "lanSubnet": "10.77.3.0/24", "lanGateway": "10.77.3.254", "lanPool": "10.77.3.100-10.77.3.120",
    "homeAssistantLanIp": "10.77.3.10", "mosquittoLanIp": "10.77.3.11", "matterServerLanIp": "10.77.3.12", "podCidr": "10.88.0.0/14",
    "domain": "lab.test", "homeAssistantHost": "hass.lab.test", "autheliaHost": "login.lab.test",
    "zigbee2mqttHost": "z2m.lab.test", "zwaveJsUiHost": "zw.lab.test", "nodeRedHost": "nr.lab.test",
    "codeServerHost": "vs.lab.test", "esphomeHost": "esp.lab.test", "clusterIssuer": "lab-dns01",
    "zigbeeNodeLabel": "node-role.kubernetes.io/zigbee-ctrl", "zwaveNodeLabel": "node-role.kubernetes.io/zwave-ctrl",
    "radioTaintKey": "du5t1n.me/machine", "dialoutGid": 18,
    "zigbeeAdapter": "ember", "zigbeeDevice": "/dev/serial/by-id/usb-zigbee-test", "zwaveDevice": "/dev/serial/by-id/usb-zwave-test",
}
EXAMPLES = ["192.168.20.", "10.42.0.0", "example.com", "home-assistant/radio", "Zooz_800", "ITead_Sonoff"]


@pytest.fixture(scope="module")
def changed_site():
    """Both overlays rendered from a copy of manifests/ whose site.yaml holds CHANGED: {overlay id: docs}."""
    kubectl = tool("kubectl")
    with tempfile.TemporaryDirectory(prefix="iotlan-site-") as tmp:
        copy = pathlib.Path(tmp, "manifests")
        shutil.copytree(MANIFESTS, copy, ignore=shutil.ignore_patterns("tests", ".pytest_cache"))
        site = copy / "home-assistant/components/site/site.yaml"
        doc = yaml.safe_load(site.read_text())
        assert set(CHANGED) == set(doc["spec"]), "CHANGED must cover every key of site.yaml"
        doc["spec"] = CHANGED
        site.write_text(yaml.safe_dump(doc))
        out = {}
        for oid in OVERLAY_IDS:
            res = run([kubectl, "kustomize", str(copy / oid)])
            assert res.returncode == 0, res.stderr
            out[oid] = res.stdout
        return out


@pytest.mark.parametrize("oid", OVERLAY_IDS)
def test_site_yaml_is_the_one_file_of_addresses(oid, changed_site):
    text = changed_site[oid]
    left = [e for e in EXAMPLES if e in text]
    assert not left, f"example values left in the render after editing site.yaml only: {left}"
    docs = [d for d in yaml.safe_load_all(text) if d]
    ipam = json.loads(one(docs, "NetworkAttachmentDefinition", "iot")["spec"]["config"])["ipam"]
    assert (ipam["subnet"], ipam["gateway"], ipam["pool"]) == (CHANGED["lanSubnet"], CHANGED["lanGateway"], [CHANGED["lanPool"]])
    assert ipam["reservations"] == {f"{HA_NAMESPACE}/home-assistant-0": CHANGED["homeAssistantLanIp"],
                                    f"{HA_NAMESPACE}/mosquitto-0": CHANGED["mosquittoLanIp"],
                                    f"{HA_NAMESPACE}/matter-server-0": CHANGED["matterServerLanIp"]}
    seed = [c for c in find(docs, "ConfigMap") if c["metadata"]["name"].startswith("home-assistant-seed")][0]
    assert json.loads(seed["data"]["http.json"])["data"]["stable"]["trusted_proxies"] == [CHANGED["podCidr"]]
    hosts = {i["metadata"]["name"]: (i["spec"]["rules"][0]["host"], i["spec"]["tls"][0]["hosts"][0])
             for i in find(docs, "Ingress")}
    assert hosts["home-assistant"] == (CHANGED["homeAssistantHost"],) * 2
    assert hosts["zwave-js-ui"] == (CHANGED["zwaveJsUiHost"],) * 2
    env = {e["name"]: e.get("value") for e in
           one(docs, "StatefulSet", "authelia")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["SITE_DOMAIN"] == CHANGED["domain"] and env["SITE_AUTH_HOST"] == CHANGED["autheliaHost"]
    for app, label, dev in (("zigbee2mqtt", "zigbeeNodeLabel", "zigbeeDevice"), ("zwave-js-ui", "zwaveNodeLabel", "zwaveDevice")):
        spec = one(docs, "StatefulSet", app)["spec"]["template"]["spec"]
        assert spec["securityContext"]["supplementalGroups"] == [18]
        if app == "zigbee2mqtt":
            env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
            assert env["ZIGBEE2MQTT_CONFIG_SERIAL_ADAPTER"] == "ember"
        assert [v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v] == [CHANGED[dev]]
        if oid.endswith("multi-node"):
            exprs = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
                "nodeSelectorTerms"][0]["matchExpressions"]
            assert exprs == [{"key": CHANGED[label], "operator": "Exists"}]
            assert spec["tolerations"] == [{"key": CHANGED["radioTaintKey"], "operator": "Exists"}]
    if oid.endswith("multi-node"):  # everything else avoids both radio labels
        ha = one(docs, "StatefulSet", "home-assistant")["spec"]["template"]["spec"]
        exprs = ha["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
            "nodeSelectorTerms"][0]["matchExpressions"]
        assert {e["key"] for e in exprs if e["operator"] == "DoesNotExist"} == {CHANGED["zigbeeNodeLabel"], CHANGED["zwaveNodeLabel"]}


def test_overlays_list_site_last():
    for oid in OVERLAY_IDS:
        comps = yaml.safe_load((MANIFESTS / oid / "kustomization.yaml").read_text())["components"]
        assert comps[-1] == "../../components/site", f"{oid}: components/site must come last"


# ------------------------------------------------------------------------------ Gateway API, cert-manager

ROUTE_HOSTS = {"home-assistant": "homeAssistantHost", "authelia": "autheliaHost", "zigbee2mqtt": "zigbee2mqttHost",
               "zwave-js-ui": "zwaveJsUiHost", "node-red": "nodeRedHost", "code-server": "codeServerHost",
               "esphome": "esphomeHost"}


def render_overlay_with(root, oid, extras):
    """kubectl kustomize of overlay `oid` of the manifests tree `root` with `extras` inserted before site."""
    from conftest import overlay_copy
    with tempfile.TemporaryDirectory(prefix="iotlan-extras-") as tmp:
        doc = overlay_copy(root / oid, tmp)
        comps = doc["components"]
        for extra in extras:
            comps.insert(len(comps) - 1, os.path.relpath(root / "home-assistant/components" / extra, tmp))
        pathlib.Path(tmp, "kustomization.yaml").write_text(yaml.safe_dump(doc))
        res = run([tool("kubectl"), "kustomize", "--load-restrictor", "LoadRestrictionsNone", tmp])
    assert res.returncode == 0, res.stderr
    return [d for d in yaml.safe_load_all(res.stdout) if d]


def check_gateway_and_certificate(docs, site):
    assert not find(docs, "Ingress"), "the Gateway API replaces every Ingress"
    gw = one(docs, "Gateway", "home-assistant")
    assert gw["apiVersion"] == "gateway.networking.k8s.io/v1" and gw["spec"]["gatewayClassName"] == "traefik"
    (listener,) = gw["spec"]["listeners"]
    # Traefik's Gateway provider binds a listener to the entry point with that port: websecure is 8443 in the pods
    assert (listener["protocol"], listener["port"]) == ("HTTPS", 8443)
    assert listener["hostname"] == "*." + site["domain"]
    assert listener["tls"]["certificateRefs"] == [{"kind": "Secret", "name": "home-assistant-tls"}]
    for name, key in ROUTE_HOSTS.items():
        route = one(docs, "HTTPRoute", name)
        assert route["spec"]["hostnames"] == [site[key]]
        assert route["spec"]["parentRefs"] == [{"name": "home-assistant", "sectionName": "websecure"}]
        (rule,) = route["spec"]["rules"]
        guarded = {"type": "ExtensionRef", "extensionRef": {"group": "traefik.io", "kind": "Middleware",
                                                           "name": "authelia"}} in rule.get("filters", [])
        assert guarded == (name not in ("home-assistant", "authelia")), name
        backend = rule["backendRefs"][0]
        svc = find(docs, "Service", backend["name"])
        if svc:
            assert backend["port"] in [p["port"] for p in svc[0]["spec"]["ports"]]
    cert = one(docs, "Certificate", "home-assistant-tls")
    assert cert["apiVersion"] == "cert-manager.io/v1" and cert["spec"]["secretName"] == "home-assistant-tls"
    assert cert["spec"]["dnsNames"] == [site["domain"], "*." + site["domain"]]
    assert cert["spec"]["issuerRef"] == {"group": "cert-manager.io", "kind": "ClusterIssuer",
                                         "name": site["clusterIssuer"]}


@pytest.mark.parametrize("oid", OVERLAY_IDS)
def test_gateway_api_with_cert_manager_follows_every_site_value(oid):
    with tempfile.TemporaryDirectory(prefix="iotlan-site-") as tmp:
        root = pathlib.Path(tmp, "manifests")
        shutil.copytree(MANIFESTS, root, ignore=shutil.ignore_patterns("tests", ".pytest_cache"))
        site = root / "home-assistant/components/site/site.yaml"
        doc = yaml.safe_load(site.read_text())
        doc["spec"] = CHANGED
        site.write_text(yaml.safe_dump(doc))
        check_gateway_and_certificate(render_overlay_with(root, oid, ["gateway-api", "cert-manager"]), CHANGED)
    example = yaml.safe_load((MANIFESTS / "home-assistant/components/site/site.yaml").read_text())["spec"]
    check_gateway_and_certificate(render_overlay_with(MANIFESTS, oid, ["gateway-api", "cert-manager"]), example)


@pytest.mark.parametrize("oid", OVERLAY_IDS)
def test_cert_manager_with_traefik_ingress_serves_the_certificate(oid):
    docs = render(BY_ID[f"{oid} + cert-manager"])
    assert one(docs, "Certificate", "home-assistant-tls")
    for ing in find(docs, "Ingress"):
        assert ing["spec"]["tls"][0]["secretName"] == "home-assistant-tls", ing["metadata"]["name"]
        assert ing["spec"]["tls"][0]["hosts"] == [ing["spec"]["rules"][0]["host"]]


def test_ingress_nginx_is_gone():
    """Retired in March 2026: no component, no annotation of it anywhere."""
    assert not (MANIFESTS / "home-assistant/components/ingress-nginx").exists()
    for path in MANIFESTS.rglob("*.yaml"):
        assert "nginx.ingress.kubernetes.io" not in path.read_text(), path


@pytest.mark.parametrize("oid", OVERLAY_IDS)
def test_traefik_is_the_default_controller(oid):
    docs = render(BY_ID[oid])
    assert {i["spec"]["ingressClassName"] for i in find(docs, "Ingress")} == {"traefik"}
    assert one(docs, "Middleware", "authelia")


# ------------------------------------------------------------------------------------------------ Bluetooth


@pytest.mark.parametrize("oid", OVERLAY_IDS)
def test_bluetooth_pins_ha_and_uses_bluez_over_dbus_without_inert_capabilities(oid):
    docs = render(BY_ID[f"{oid} + bluetooth"])
    spec = one(docs, "StatefulSet", "home-assistant")["spec"]["template"]["spec"]
    assert spec["nodeSelector"]["home-assistant/bluetooth"] == "true"
    ha = spec["containers"][0]
    assert spec["securityContext"]["runAsUser"] == 1000 and spec["securityContext"]["runAsNonRoot"] is True
    assert "add" not in ha["securityContext"]["capabilities"], "inert for uid 1000 (see the test below)"
    assert ha["securityContext"]["capabilities"]["drop"] == ["ALL"] and not ha["securityContext"].get("privileged")
    dbus = [v for v in spec["volumes"] if v["name"] == "dbus"][0]
    assert dbus["hostPath"] == {"path": "/run/dbus", "type": "Directory"}
    assert {"name": "dbus", "mountPath": "/run/dbus", "readOnly": True} in ha["volumeMounts"]
    assert "org.bluez" in (MANIFESTS / "home-assistant/components/bluetooth/bluez-policy.conf").read_text()


def test_a_capability_without_ambient_is_gone_after_exec_for_a_non_root_user():
    """What the README states, measured on this kernel with util-linux's setpriv: a uid-1000 process that holds
    NET_ADMIN and NET_RAW in its bounding and inheritable sets, as runc leaves a non-root container's process
    (containerd's CRI strips ambient capabilities: internal/cri/server/container_create.go, WithoutAmbientCaps,
    containerd v2.4 development branch), exec's a program without file capabilities with an empty effective set.
    The control: the same with the ambient set filled keeps them (what Kubernetes does not offer)."""
    import os
    import shutil
    need(os.geteuid() == 0 and shutil.which("setpriv"), "needs root and setpriv (util-linux)")
    base = ["setpriv", "--reuid", "1000", "--regid", "1000", "--clear-groups", "--inh-caps", "+net_admin,+net_raw",
            "--bounding-set", "-all,+net_admin,+net_raw"]
    read = ["sh", "-c", "grep -E '^Cap(Eff|Amb):' /proc/self/status"]
    net_admin_and_raw = (1 << 12) | (1 << 13)
    caps = lambda out: {k: int(v, 16) for k, v in (ln.split(":\t") for ln in out.splitlines())}
    without = caps(subprocess.run(base + read, capture_output=True, text=True, timeout=30, check=True).stdout)
    assert without == {"CapEff": 0, "CapAmb": 0}
    with_ambient = caps(subprocess.run(base + ["--ambient-caps", "+net_admin,+net_raw"] + read, capture_output=True,
                                       text=True, timeout=30, check=True).stdout)
    assert with_ambient["CapEff"] == net_admin_and_raw


# ------------------------------------------------------------------------------------ database operators


@pytest.mark.parametrize("oid", OVERLAY_IDS)
def test_zalando_postgresql_resource(oid):
    docs = render(BY_ID[f"{oid} + postgres-zalando"])
    pg = one(docs, "postgresql", "home-assistant-db")
    assert pg["apiVersion"] == "acid.zalan.do/v1"
    spec = pg["spec"]
    assert pg["metadata"]["name"].startswith(spec["teamId"] + "-"), "the operator requires the teamId prefix"
    assert spec["numberOfInstances"] >= 1 and spec["volume"]["size"] and spec["postgresql"]["version"]
    assert "homeassistant" in spec["users"] and spec["databases"] == {"homeassistant": "homeassistant"}
    policy = one(docs, "NetworkPolicy", "home-assistant-db")
    assert policy["spec"]["podSelector"]["matchLabels"] == {"cluster-name": "home-assistant-db"}
    assert not find(docs, "StatefulSet", "postgres")


@pytest.mark.parametrize("oid", OVERLAY_IDS)
def test_cnpg_cluster_resource(oid):
    docs = render(BY_ID[f"{oid} + postgres-cnpg"])
    cl = one(docs, "Cluster", "home-assistant-db")
    assert cl["apiVersion"] == "postgresql.cnpg.io/v1"
    spec = cl["spec"]
    assert spec["instances"] >= 1 and spec["storage"]["size"] and ":" in spec["imageName"]
    assert spec["bootstrap"]["initdb"] == {"database": "homeassistant", "owner": "homeassistant"}
    policy = one(docs, "NetworkPolicy", "home-assistant-db")
    assert policy["spec"]["podSelector"]["matchLabels"] == {"cnpg.io/cluster": "home-assistant-db"}
    assert not find(docs, "StatefulSet", "postgres")


def test_built_in_postgres_stays_the_default():
    for oid in OVERLAY_IDS:
        docs = render(BY_ID[oid])
        assert one(docs, "StatefulSet", "postgres") and not find(docs, "postgresql") and not find(docs, "Cluster")


# ------------------------------------------------------------------------------------- the Leases' namespace


def test_the_lease_namespace_outlives_the_daemonset():
    """`kubectl delete -k manifests/iotlan/base` must not delete the Leases, nor the ServiceAccount whose token the
    plugin on each node keeps using without the agent: both are in their own kustomization, never pruned."""
    docs = render(BY_ID["iotlan/namespace"])
    assert ("Namespace", "iotlan-system") in [(d["kind"], d["metadata"]["name"]) for d in docs]
    ns = one(docs, "Namespace", "iotlan-system")["metadata"]
    assert ns["annotations"]["kustomize.toolkit.fluxcd.io/prune"] == "disabled"
    assert ns["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    sa = one(docs, "ServiceAccount", "iotlan")
    assert sa["metadata"]["namespace"] == "iotlan-system"
    for d in docs:
        # Never pruned by Flux, also when an older install's iotlan Kustomization (whose base held them) drops them.
        assert d["metadata"]["annotations"]["kustomize.toolkit.fluxcd.io/prune"] == "disabled", name_of(d)
    for tid in ("iotlan/base", "iotlan/k3s", "iotlan/k3s-before-2024-10"):
        kept = [name_of(d) for d in render(BY_ID[tid])
                if d["kind"] in ("Namespace", "ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding")]
        assert not kept, f"{tid} would delete {kept} with the DaemonSet"
        ds = one(render(BY_ID[tid]), "DaemonSet", "iotlan")
        assert ds["spec"]["template"]["spec"]["serviceAccountName"] == "iotlan"

# ----------------------------------------------------------------------------------------------------- Flux


def test_flux_kustomizations_chain_multus_iotlan_home_assistant():
    docs = render(BY_ID["flux"])
    ks = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Kustomization"}
    for name, d in ks.items():
        assert d["apiVersion"] == "kustomize.toolkit.fluxcd.io/v1" and d["metadata"]["namespace"] == "flux-system"
        spec = d["spec"]
        # The Leases' namespace is never pruned: removing the iotlan Kustomization keeps the address records.
        assert spec["prune"] is (not name.endswith("-namespace")), f"{name}: prune {spec['prune']}"
        assert spec["interval"] and spec["sourceRef"]["kind"] == "GitRepository"
        assert spec["path"].startswith("./manifests/")
        if name != "home-assistant-secrets":  # that one is the user's, written by create-secrets.sh --dry-run
            assert (MANIFESTS.parent / spec["path"] / "kustomization.yaml").exists(), spec["path"]
    deps = {n: [x["name"] for x in d["spec"].get("dependsOn", [])] for n, d in ks.items()}
    assert deps["multus"] == [] and deps["iotlan-namespace"] == [] and deps["home-assistant-namespace"] == []
    assert set(deps["iotlan"]) == {"multus", "iotlan-namespace"}
    assert set(deps["home-assistant"]) == {"iotlan", "home-assistant-namespace", "home-assistant-secrets"}
    assert deps["home-assistant-secrets"] == ["home-assistant-namespace"]
    assert ks["home-assistant-secrets"]["spec"]["decryption"]["provider"] == "sops"


def test_sops_ready_secret_files():
    files = generated_secret_files()
    kust = yaml.safe_load(files["kustomization.yaml"])
    assert sorted(kust["resources"]) == sorted(f for f in files if f != "kustomization.yaml")
    assert "namespace.yaml" not in files and "mqtt-devices.yaml" in kust["resources"]
    rules = yaml.safe_load((MANIFESTS / "flux/secrets/.sops.yaml").read_text())["creation_rules"][0]
    assert rules["encrypted_regex"] == "^(data|stringData)$"


# ------------------------------------------------------------------------------------- backups, SELinux


def test_config_volume_is_backed_up_next_to_the_database():
    docs = render(BY_ID["home-assistant/base"])
    cron = one(docs, "CronJob", "config-backup")
    spec = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert cron["spec"]["concurrencyPolicy"] == "Forbid" and cron["spec"]["schedule"] != \
        one(docs, "CronJob", "postgres-backup")["spec"]["schedule"]
    claims = {v["name"]: v["persistentVolumeClaim"] for v in spec["volumes"]}
    assert claims["config"] == {"claimName": "config-home-assistant-0", "readOnly": True}
    assert one(docs, "PersistentVolumeClaim", claims["backup"]["claimName"])
    aff = spec["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert aff["labelSelector"]["matchLabels"] == {"app.kubernetes.io/name": "home-assistant"}, "RWO: HA's node"
    script = spec["containers"][0]["args"][0]
    assert "tar -C /config" in script and "tar -tzf" in script and "BACKUP_KEEP" in script


def test_iotlan_rbac_is_least_privilege_and_lets_status_read_the_duplicate_events():
    """The node agent posts DuplicateAddress Events and `iotlan status` (as the same ServiceAccount on a node or in
    its pod) lists them back: kube's Recorder posts events.k8s.io/v1 Events (create, and patch to add a recurrence to
    an Event's series), status lists them; in the Leases' namespace only, none in the core group, and no wildcards
    anywhere."""
    docs = render(BY_ID["iotlan/namespace"])
    role = one(docs, "Role", "iotlan-leases")
    assert role["metadata"]["namespace"] == "iotlan-system"
    events = [r for r in role["rules"] if "events" in r["resources"]]
    assert events == [{"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch", "list"]}]
    binding = one(docs, "RoleBinding", "iotlan-leases")
    assert binding["roleRef"]["name"] == "iotlan-leases" and binding["metadata"]["namespace"] == "iotlan-system"
    assert {"kind": "ServiceAccount", "name": "iotlan", "namespace": "iotlan-system"} in binding["subjects"]
    for kind in ("Role", "ClusterRole"):
        for d in find(docs, kind):
            for r in d["rules"]:
                assert "*" not in r["verbs"] and "*" not in r["resources"], f"{name_of(d)}: {r}"
            if kind == "ClusterRole":
                assert not [r for r in d["rules"] if "events" in r["resources"]], "events stay namespaced"


def test_the_agent_may_request_tokens_of_its_own_serviceaccount_only():
    """The plugin's kubeconfig carries a TokenRequest token of the iotlan ServiceAccount (not the agent pod's own,
    which dies with the pod): `create` on `serviceaccounts/token`, limited to that ServiceAccount by name."""
    docs = render(BY_ID["iotlan/namespace"])
    grants = [(d, r) for kind in ("Role", "ClusterRole") for d in find(docs, kind) for r in d["rules"]
              if any(res.startswith("serviceaccounts") for res in r["resources"])]
    assert len(grants) == 1, grants
    role, rule = grants[0]
    assert role["kind"] == "Role" and role["metadata"]["namespace"] == "iotlan-system"
    assert rule == {"apiGroups": [""], "resources": ["serviceaccounts/token"], "resourceNames": ["iotlan"],
                    "verbs": ["create"]}
    bindings = [b for b in find(docs, "RoleBinding") if b["roleRef"]["name"] == role["metadata"]["name"]]
    assert len(bindings) == 1 and bindings[0]["metadata"]["namespace"] == "iotlan-system"
    assert bindings[0]["subjects"] == [{"kind": "ServiceAccount", "name": "iotlan", "namespace": "iotlan-system"}]


# The CNI_NETNS each runtime passes: podman /run/netns/netns-<uuid>; containerd's CRI /var/run/netns/cni-<uuid>
# (containerd v1.6.9 pkg/cri/server/sandbox_run.go, netnsMountDir); CRI-O /var/run/netns/<uuid>.
RUNTIME_NETNS = ["/run/netns/netns-0e9f8a7b-6c5d-4e3f-2a1b-0c9d8e7f6a5b",
                 "/var/run/netns/cni-1b2c3d4e-5f60-7a8b-9c0d-0e1f2a3b4c5d",
                 "/var/run/netns/5c1e8d1a-93b2-4f6e-a0d7-2b8c9e4f1a36"]


@pytest.mark.parametrize("tid", ["iotlan/base", "iotlan/k3s", "iotlan/k3s-before-2024-10"])
def test_the_agent_sees_every_netns_path_a_runtime_passes(tid):
    """The agent judges a sandbox gone by its CNI_NETNS under /host. The host's /var/run is a link to /run, which the
    agent's view does not have: the directory of every path a runtime passes must be mounted at /host + that path,
    read-only, with new namespaces propagated, from the host's real directory (/var/run resolved to /run):
    containerd 1.6 (pkg/cri/opts/spec_linux.go ensureShared, through mount.Lookup, which follows no link) refuses a
    propagated hostPath under the /var/run link when the root mount is private, as measured on a real node."""
    ds = one(render(BY_ID[tid]), "DaemonSet", "iotlan")
    spec = ds["spec"]["template"]["spec"]
    host_paths = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    mounts = {m["mountPath"]: m for m in spec["containers"][0]["volumeMounts"]}
    for netns in RUNTIME_NETNS:
        directory = netns.rsplit("/", 1)[0]
        m = mounts.get("/host" + directory)
        assert m, f"{netns}: nothing mounted at /host{directory}"
        real = "/run" + directory[len("/var/run"):] if directory.startswith("/var/run/") else directory
        assert host_paths[m["name"]] == real, (netns, m)
        assert m.get("readOnly") is True and m.get("mountPropagation") == "HostToContainer", m


@pytest.mark.parametrize("tid", ["iotlan/base", "iotlan/k3s", "iotlan/k3s-before-2024-10"])
def test_iotlan_daemonset_runs_as_spc_t(tid):
    ds = one(render(BY_ID[tid]), "DaemonSet", "iotlan")
    assert ds["spec"]["template"]["spec"]["securityContext"]["seLinuxOptions"] == {"type": "spc_t"}
    assert "spc_t" in (MANIFESTS / "iotlan/base/daemonset.yaml").read_text().split("seLinuxOptions")[0][-600:]


def test_radio_apps_may_fetch_updates_over_https_only():
    docs = render(BY_ID["home-assistant/overlays/multi-node"])
    for name in ("zigbee2mqtt", "zwave-js-ui"):
        rules = one(docs, "NetworkPolicy", name)["spec"]["egress"]
        web = [r for r in rules if any("ipBlock" in p for p in r["to"])]
        assert len(web) == 1 and web[0]["ports"] == [{"protocol": "TCP", "port": 443}]
        block = web[0]["to"][0]["ipBlock"]
        assert block["cidr"] == "0.0.0.0/0"
        assert {ipaddress.ip_network(n) for n in block["except"]} >= {
            ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")}


def test_readme_covers_discovery_on_net1_and_the_dialout_gid():
    text = (MANIFESTS / "README.md").read_text()
    assert "Settings → System → Network" in text, "the fallback when multicast is not routed through net1"
    assert "224.0.0.251" in text and "homeassistant/components/network/util.py" in text
    assert "getent group dialout" in text


@pytest.mark.parametrize("target", TARGETS, ids=[t.id for t in TARGETS])
def test_network_policies_carry_no_empty_rule_lists(target):
    """An empty `ingress: []` or `egress: []` means what leaving it out means (no traffic of that direction, as
    `policyTypes` lists it), but the API server drops it (k8s.io/api networking/v1 types.go: `ingress,omitempty`),
    so every `kubectl apply` of the unchanged file reports the policy "configured" and bumps its generation
    (measured: re-applying iotlan/base on a real Kubernetes 1.31). Leave the key out instead."""
    for policy in find(render(target), "NetworkPolicy"):
        for key in ("ingress", "egress"):
            assert policy["spec"].get(key, None) != [], f"{name_of(policy)}: spec.{key} is an empty list"
