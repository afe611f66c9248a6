"""renovate.json, checked against Renovate's documented options (docs/usage/configuration-options.md of
renovatebot/renovate, 2026): each key used is a documented option of the right type, and the kubernetes manager's
file patterns reach every pinned image of the manifests. Renovate's own validator (npm `renovate`) needs a newer
Node.js than this machine's, so the documented options we use are restated here."""

import json
import re

from conftest import MANIFESTS, REPO, TARGETS, containers, render, workloads

CONFIG = REPO / "renovate.json"
# option -> (type, allowed values or None): from configuration-options.md
TOP = {"$schema": (str, None), "extends": (list, None), "timezone": (str, None), "kubernetes": (dict, None),
       "packageRules": (list, None)}
MANAGER = {"managerFilePatterns": (list, None)}
RULE = {"description": (str, None), "matchDatasources": (list, {"docker"}), "matchPackageNames": (list, None),
        "matchUpdateTypes": (list, {"major", "minor", "patch", "pin", "digest", "lockFileMaintenance",
                                    "rollback", "bump", "replacement"}),
        "dependencyDashboardApproval": (bool, None), "groupName": (str, None)}


def check(obj, schema, where):
    for key, value in obj.items():
        assert key in schema, f"{where}.{key} is not a documented option (or not one this test knows)"
        kind, allowed = schema[key]
        assert isinstance(value, kind), f"{where}.{key} must be {kind.__name__}"
        if allowed:
            assert set(value) <= allowed, f"{where}.{key}: {set(value) - allowed}"


def test_renovate_json_uses_documented_options():
    config = json.loads(CONFIG.read_text())
    check(config, TOP, "renovate.json")
    check(config["kubernetes"], MANAGER, "kubernetes")
    for i, rule in enumerate(config["packageRules"]):
        check(rule, RULE, f"packageRules[{i}]")
        assert any(k.startswith("match") for k in rule), "a rule without a match applies to everything"
    assert "config:recommended" in config["extends"]


def test_the_kubernetes_manager_sees_every_pinned_image():
    """The kubernetes manager has no default file patterns: ours must reach each file that pins an image, and
    Renovate's kustomize manager (default kustomization.yaml) handles the iotlan `images:` entry."""
    patterns = [re.compile(p.strip("/")) for p in json.loads(CONFIG.read_text())["kubernetes"]["managerFilePatterns"]]
    files = [p.relative_to(REPO).as_posix() for p in MANIFESTS.rglob("*.yaml") if "tests" not in p.parts]
    pinned = [f for f in files if re.search(r"(?m)^\s*-?\s*(image|imageName): \S+:\S+", (REPO / f).read_text())]
    assert len(pinned) >= 10
    for f in pinned:
        assert any(p.search(f) for p in patterns), f"{f} pins an image Renovate would not see"
    names = {c["image"].rsplit(":", 1)[0] for t in TARGETS for _, _, s in workloads(render(t)) for c, _ in containers(s)}
    for rule in json.loads(CONFIG.read_text())["packageRules"]:
        for name in rule.get("matchPackageNames", []):
            assert name in names or name == "ghcr.io/cloudnative-pg/postgresql", f"{name} matches no image"
