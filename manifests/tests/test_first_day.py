"""A home-labber's first day (issue 17, section 2): the day-one defects of the Home Assistant manifests, each
checked the way a user would meet it, against the upstream file and version its behaviour follows."""

import base64
import copy
import json
import os
import pathlib
import re
import shutil
import subprocess
import tempfile

import pytest
import yaml

from conftest import (HA_NAMESPACE, MANIFESTS, TARGETS, find, one, render, run, tool, workloads)

BY_ID = {t.id: t for t in TARGETS}
OVERLAY_IDS = ["home-assistant/overlays/k3s-single-node", "home-assistant/overlays/multi-node"]
HA_CONFIG = MANIFESTS / "home-assistant/base/home-assistant/config"
RADIO_APPS = {"zigbee2mqtt", "zwave-js-ui"}


# ------------------------------------------------------------ 1. the UI's automations, scripts and scenes load

# home-assistant/core homeassistant/config.py, DEFAULT_CONFIG and _write_default_config (read in the PyPI
# release 2026.2.3, the newest this machine's index holds; the lines are unchanged since 2023): the default
# configuration includes the three files the UI's editors write, and the first start creates them.
HA_DEFAULT_INCLUDES = {"automation": "automations.yaml", "script": "scripts.yaml", "scene": "scenes.yaml"}
HA_DEFAULT_FILES = {"automations.yaml": "[]", "scripts.yaml": "", "scenes.yaml": ""}


class IncludeLoader(yaml.SafeLoader):
    """HA's YAML tags as homeassistant/util/yaml/loader.py resolves them, for the ones the seed uses."""


def _include(loader, node):
    path = pathlib.Path(loader.config_dir, loader.construct_scalar(node))
    assert path.exists(), f"!include {path.name}: the file does not exist (HA refuses to start)"
    return yaml.load(path.read_text(), Loader=_loader_for(loader.config_dir)) if path.read_text().strip() else None


def _include_dir_merge_named(loader, node):
    path = pathlib.Path(loader.config_dir, loader.construct_scalar(node))
    merged = {}
    for f in sorted(path.glob("*.yaml")) if path.is_dir() else []:
        merged.update(yaml.load(f.read_text(), Loader=_loader_for(loader.config_dir)) or {})
    return merged


def _loader_for(config_dir):
    class L(IncludeLoader):
        pass
    L.config_dir = config_dir
    L.add_constructor("!include", _include)
    L.add_constructor("!include_dir_merge_named", _include_dir_merge_named)
    L.add_constructor("!env_var", lambda loader, node: os.environ.get(loader.construct_scalar(node), ""))
    return L


def run_init(config_dir, seed_dir=HA_CONFIG):
    """The init container's init.sh, with /config, /seed and /includes moved to temp dirs."""
    includes = config_dir.parent / "includes"
    includes.mkdir(exist_ok=True)
    for f in ("recorder.yaml", "logger.yaml"):
        shutil.copy(seed_dir / f, includes / f)
    script = (seed_dir / "init.sh").read_text()
    for path, real in (("/seed", seed_dir), ("/includes", includes), ("/config", config_dir)):
        script = re.sub(rf"(?<=[\s\"'>]){path}(?=[/\s\"']|$)", str(real), script, flags=re.M)
    config_dir.mkdir(exist_ok=True)
    res = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr


def test_seed_configuration_has_home_assistants_default_includes():
    doc = yaml.load((HA_CONFIG / "configuration.yaml").read_text(), Loader=yaml.BaseLoader)
    text = (HA_CONFIG / "configuration.yaml").read_text()
    for key, file in HA_DEFAULT_INCLUDES.items():
        assert re.search(rf"(?m)^{key}: !include {re.escape(file)}$", text), f"{key}: !include {file} missing"
    assert "default_config" in doc and "frontend" in doc


def test_first_start_loads_the_files_the_ui_writes(tmp_path):
    run_init(tmp_path / "config")
    config = tmp_path / "config"
    for name, content in HA_DEFAULT_FILES.items():
        assert (config / name).read_text() == content, name
    loaded = yaml.load((config / "configuration.yaml").read_text(), Loader=_loader_for(config))
    assert loaded["automation"] == [] and loaded["script"] is None and loaded["scene"] is None
    # an automation saved by the UI (it appends to automations.yaml) is what HA then loads
    (config / "automations.yaml").write_text("- id: '1'\n  alias: Porch light\n  triggers: []\n  actions: []\n")
    loaded = yaml.load((config / "configuration.yaml").read_text(), Loader=_loader_for(config))
    assert loaded["automation"][0]["alias"] == "Porch light"
    assert loaded["recorder"]["db_url"] is not None


def test_a_restart_keeps_what_the_ui_saved(tmp_path):
    config = tmp_path / "config"
    run_init(config)
    (config / "scripts.yaml").write_text("wake_up:\n  sequence: []\n")
    run_init(config)
    assert (config / "scripts.yaml").read_text() == "wake_up:\n  sequence: []\n"


# ------------------------------------------------------------- 2. radio apps are components, on any arch


def test_radio_apps_are_components_not_in_the_base():
    base = render(BY_ID["home-assistant/base"])
    assert not [o for o, _, _ in workloads(base) if o["metadata"]["name"] in RADIO_APPS]
    for app in RADIO_APPS:
        docs = render(BY_ID[f"home-assistant/components/{app} (on its base)"])
        assert one(docs, "StatefulSet", app) and one(docs, "Service", app) and one(docs, "NetworkPolicy", app)


@pytest.mark.parametrize("oid", OVERLAY_IDS)
def test_an_overlay_without_one_radio_app_renders_without_it(oid, tmp_path):
    """A home with one stick removes the other's line from its overlay: the rest renders, site values included."""
    from conftest import overlay_copy
    for dropped in RADIO_APPS:
        doc = overlay_copy(MANIFESTS / oid, tmp_path)
        doc["components"] = [c for c in doc["components"] if not c.endswith(f"components/{dropped}")]
        (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(doc))
        res = run([tool("kubectl"), "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(tmp_path)])
        assert res.returncode == 0, res.stderr
        docs = [d for d in yaml.safe_load_all(res.stdout) if d]
        assert not find(docs, "StatefulSet", dropped) and not find(docs, "Ingress", dropped)
        (kept,) = RADIO_APPS - {dropped}
        assert one(docs, "StatefulSet", kept)


@pytest.mark.parametrize("oid", OVERLAY_IDS)
def test_radio_apps_follow_the_label_whatever_the_nodes_architecture(oid):
    for app in RADIO_APPS:
        spec = one(render(BY_ID[oid]), "StatefulSet", app)["spec"]["template"]["spec"]
        assert "kubernetes.io/arch" not in (spec.get("nodeSelector") or {}), "an amd64 radio node stays Pending"
        exprs = [e for t in (spec.get("affinity", {}).get("nodeAffinity", {})
                             .get("requiredDuringSchedulingIgnoredDuringExecution", {}).get("nodeSelectorTerms", []))
                 for e in t.get("matchExpressions", [])]
        assert not [e for e in exprs if e["key"] == "kubernetes.io/arch"]


# ------------------------------------------------- 3. Flux is Ready without waiting for the backups' first night


def flux_docs():
    return {d["metadata"]["name"]: d for d in render(BY_ID["flux"]) if d["kind"] == "Kustomization"}


def test_flux_readiness_does_not_wait_for_claims_that_bind_at_night():
    """kustomize-controller (fluxcd api/v1 Kustomization): `wait: true` health-checks every applied object, and a
    PersistentVolumeClaim is healthy only when Bound; local-path (k3s) binds on first consumer, which for the
    backup claims is the CronJob's first run at night. With `wait` false Flux checks `healthChecks` only."""
    ks = flux_docs()["home-assistant"]["spec"]
    assert ks["wait"] is False
    path = MANIFESTS.parent / ks["path"]
    docs = [d for d in yaml.safe_load_all(run([tool("kubectl"), "kustomize", str(path)]).stdout) if d]
    standalone_claims = {c["metadata"]["name"] for c in find(docs, "PersistentVolumeClaim")}
    assert {"postgres-backup", "config-backup"} <= standalone_claims, "the claims that defeated wait: true"
    checked = {(h["kind"], h["name"]) for h in ks["healthChecks"]}
    assert checked == {("StatefulSet", "home-assistant"), ("StatefulSet", "postgres"), ("StatefulSet", "mosquitto")}
    for kind, name in checked:
        assert one(docs, kind, name), f"health check of {kind}/{name}, which the overlay does not contain"
    assert not {n for k, n in checked if n in RADIO_APPS}, "a missing stick must not hold Flux back"


# --------------------------------------------------------------------------- 4. one owner of the namespace


def namespaces_in(path):
    res = run([tool("kubectl"), "kustomize", str(path)])
    assert res.returncode == 0, res.stderr
    return [d for d in yaml.safe_load_all(res.stdout) if d and d["kind"] == "Namespace"]


def test_the_namespace_has_one_owner(tmp_path):
    flux = flux_docs()
    owners = []
    for name, ks in flux.items():
        if name == "home-assistant-secrets":  # the user's directory, written by create-secrets.sh --dry-run
            out = tmp_path / "secrets"
            users = tmp_path / "users.yml"
            users.write_text("users: {}\n")
            res = run(["bash", str(MANIFESTS / "home-assistant/create-secrets.sh"), "--dry-run", str(out)],
                      env=dict(os.environ, AUTHELIA_USERS_FILE=str(users)))
            assert res.returncode == 0, res.stderr
            found = namespaces_in(out)
        else:
            found = namespaces_in(MANIFESTS.parent / ks["spec"]["path"])
        owners += [name for ns in found if ns["metadata"]["name"] == HA_NAMESPACE]
    assert owners == ["home-assistant-namespace"]
    ns_ks = flux["home-assistant-namespace"]["spec"]
    assert ns_ks["prune"] is False
    for dependent in ("home-assistant-secrets", "home-assistant"):
        assert "home-assistant-namespace" in [d["name"] for d in flux[dependent]["spec"]["dependsOn"]]
    for oid in OVERLAY_IDS:
        assert not find(render(BY_ID[oid]), "Namespace")
    ns = one(render(BY_ID["home-assistant/namespace"]), "Namespace", HA_NAMESPACE)
    assert ns["metadata"]["annotations"]["kustomize.toolkit.fluxcd.io/prune"] == "disabled"
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"


# ------------------------------------------------------ 5. create-secrets.sh keeps what exists, adds what is missing


def create_secrets(out, users=None):
    env = dict(os.environ)
    if users:
        env["AUTHELIA_USERS_FILE"] = str(users)
    else:
        env.pop("AUTHELIA_USERS_FILE", None)
    res = run(["bash", str(MANIFESTS / "home-assistant/create-secrets.sh"), "--dry-run", str(out)], env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def secret_values(out, name):
    doc = yaml.safe_load((out / f"{name}.yaml").read_text())
    return {k: base64.b64decode(v).decode() for k, v in doc["data"].items()}


def test_running_create_secrets_twice_changes_nothing(tmp_path):
    tool("kubectl")
    out = tmp_path / "out"
    first = create_secrets(out)
    second = create_secrets(out)
    assert first == second, [n for n in first if first[n] != second.get(n)]


def test_adding_authelia_later_keeps_every_other_value(tmp_path):
    tool("kubectl")
    out = tmp_path / "out"
    first = create_secrets(out)
    assert "authelia.yaml" not in first
    users = tmp_path / "users.yml"
    users.write_text("users: {}\n")
    second = create_secrets(out, users)
    assert set(second) - set(first) == {"authelia.yaml"}
    for name in first:
        if name != "kustomization.yaml":
            assert second[name] == first[name], f"{name} changed when Authelia was added"
    assert "authelia.yaml" in yaml.safe_load(second["kustomization.yaml"])["resources"]


def test_a_deleted_mqtt_user_gets_a_new_password_and_the_others_keep_theirs(tmp_path):
    """Rotating the LAN devices' password (delete mqtt-devices, run again) must not touch HA's, Zigbee2MQTT's or
    Node-RED's: their lines of the password file stay byte for byte, the devices' line verifies the new password
    (PBKDF2-SHA512, mosquitto's "$7$" format: eclipse/mosquitto apps/mosquitto_passwd, 2.0.x)."""
    import hashlib
    tool("kubectl")
    out = tmp_path / "out"
    create_secrets(out)
    before = secret_values(out, "mosquitto-passwd")["passwd"].splitlines()
    old_devices = secret_values(out, "mqtt-devices")["password"]
    (out / "mqtt-devices.yaml").unlink()
    create_secrets(out)
    after = secret_values(out, "mosquitto-passwd")["passwd"].splitlines()
    new_devices = secret_values(out, "mqtt-devices")["password"]
    assert new_devices != old_devices
    lines = lambda ls: {ln.split(":", 1)[0]: ln for ln in ls}
    assert {u: ln for u, ln in lines(after).items() if u != "devices"} == \
        {u: ln for u, ln in lines(before).items() if u != "devices"}
    _, _, rounds, salt, digest = lines(after)["devices"].split(":", 1)[1].split("$")
    assert base64.b64encode(hashlib.pbkdf2_hmac("sha512", new_devices.encode(), base64.b64decode(salt),
                                                int(rounds), 64)).decode() == digest
    assert set(lines(after)) == {"homeassistant", "zigbee2mqtt", "nodered", "devices"}


def test_a_sops_encrypted_value_is_never_overwritten(tmp_path):
    """An encrypted file (committed for Flux) whose value the script would need is an error, not a rotation."""
    tool("kubectl")
    out = tmp_path / "out"
    create_secrets(out)
    passwd = out / "mosquitto-passwd.yaml"
    passwd.write_text(re.sub(r"(?m)^  passwd: \S+$", "  passwd: ENC[AES256_GCM,data:abc,type:str]",
                             passwd.read_text()))
    encrypted = passwd.read_bytes()
    (out / "mqtt-devices.yaml").unlink()
    res = run(["bash", str(MANIFESTS / "home-assistant/create-secrets.sh"), "--dry-run", str(out)])
    assert res.returncode != 0 and "sops" in res.stderr
    assert passwd.read_bytes() == encrypted


# --------------------------------------------------------------- 6. the NAD built from site.yaml, robustly

NAD_FILE = MANIFESTS / "iotlan/network/nad-iot.yaml"
SITE_FILE = MANIFESTS / "home-assistant/components/site/site.yaml"


def changed_site_values():
    from test_extras import CHANGED
    return dict(CHANGED)


def edit_nad_like_a_user(text):
    """What the issue reports breaking the positional replacements: one more `exclude` entry (before the
    reservations), `"hostShim": true` as the NAD's comment suggests, and keys in another order."""
    text = text.replace('"exclude": [],', '"exclude": ["10.77.3.50", "10.77.3.51-10.77.3.55"],\n'
                                          '        "routes": [{ "dst": "10.99.0.0/24" }],')
    text = text.replace('        "routes": [],\n', "")
    text = text.replace('      "cniVersion": "1.0.0",', '      "sourceRouting": true,\n      "hostShim": true,\n'
                                                       '      "cniVersion": "1.0.0",')
    text = text.replace(',\n      "sourceRouting": true\n    }', "\n    }")
    return text


@pytest.fixture(scope="module")
def user_edited_renders():
    """Both overlays (and one with the matter-server component) rendered from a copy of manifests/ whose
    site.yaml holds other values for every key and whose NAD was edited as above: {id: (docs, edited JSON)}."""
    kubectl = tool("kubectl")
    site_values = changed_site_values()
    with tempfile.TemporaryDirectory(prefix="iotlan-nad-") as tmp:
        root = pathlib.Path(tmp, "manifests")
        shutil.copytree(MANIFESTS, root, ignore=shutil.ignore_patterns("tests", ".pytest_cache"))
        site = root / SITE_FILE.relative_to(MANIFESTS)
        doc = yaml.safe_load(site.read_text())
        assert set(site_values) == set(doc["spec"]), "test_extras.CHANGED must cover every key of site.yaml"
        doc["spec"] = site_values
        site.write_text(yaml.safe_dump(doc))
        nad = root / NAD_FILE.relative_to(MANIFESTS)
        edited = edit_nad_like_a_user(nad.read_text())
        nad.write_text(edited)
        template = json.loads(yaml.safe_load(edited)["spec"]["config"])
        assert template["hostShim"] is True and len(template["ipam"]["exclude"]) == 2
        out = {}
        for oid in OVERLAY_IDS:
            res = run([kubectl, "kustomize", str(root / oid)])
            assert res.returncode == 0, res.stderr
            out[oid] = [d for d in yaml.safe_load_all(res.stdout) if d]
        return out, template, site_values


@pytest.mark.parametrize("oid", OVERLAY_IDS)
def test_every_site_value_lands_in_its_nad_key_and_nothing_else_changes(oid, user_edited_renders):
    renders, template, site = user_edited_renders
    got = json.loads(one(renders[oid], "NetworkAttachmentDefinition", "iot")["spec"]["config"])
    want = copy.deepcopy(template)
    want["ipam"].update(subnet=site["lanSubnet"], gateway=site["lanGateway"], pool=[site["lanPool"]])
    want["ipam"]["reservations"] = {f"{HA_NAMESPACE}/home-assistant-0": site["homeAssistantLanIp"],
                                    f"{HA_NAMESPACE}/mosquitto-0": site["mosquittoLanIp"],
                                    f"{HA_NAMESPACE}/matter-server-0": site["matterServerLanIp"]}
    if oid.endswith("k3s-single-node"):
        want["ipam"]["store"] = {"kind": "file", "dir": "/var/lib/cni/iotlan"}
    assert got == want
    assert list(got) == list(want), "key order kept"


@pytest.mark.parametrize("oid", OVERLAY_IDS)
def test_the_nad_passes_iotlan_validate_after_the_edits(oid, user_edited_renders):
    from test_networks import iotlan_bin
    renders, _, _ = user_edited_renders
    config = one(renders[oid], "NetworkAttachmentDefinition", "iot")["spec"]["config"]
    res = run([iotlan_bin(), "validate", "-"], input=config)
    assert res.returncode == 0, res.stdout + res.stderr


def test_every_slot_marker_occurs_exactly_twice():
    """A slot is found by its marker; a marker that occurs once or three times would split the JSON wrongly."""
    config = yaml.safe_load(NAD_FILE.read_text())["spec"]["config"]
    for n in range(1, 9):
        assert config.count("\t" + " " * n + "\t") == 2, f"slot {n}"
    http = (HA_CONFIG / "http.json").read_text()
    assert http.count("\t" + " " * 9 + "\t") == 2
    json.loads(config), json.loads(http)
