"""Shared helpers for the offline manifest suite: discovery, rendering, tool lookup, pod-template walking.

Run: python3 -m pytest -q manifests/tests   (tools: manifests/setup.sh)
A missing tool or binary skips its tests with a reason, and fails them when CI=true.
"""

import functools
import os
import pathlib
import shutil
import subprocess
import tempfile

import pytest
import yaml

MANIFESTS = pathlib.Path(__file__).resolve().parents[1]
REPO = MANIFESTS.parent
IN_CI = os.environ.get("CI") == "true"
TOOLS_VENV = pathlib.Path(os.environ.get("IOTLAN_TOOLS_VENV", "/opt/iotlan/manifest-tools"))
HA_NAMESPACE = "home-assistant"
NO_PROBES_ANNOTATION = "iotlan/no-probes-reason"
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod", "ReplicaSet"}


def need(ok, reason):
    """Skip (outside CI) or fail (CI=true) when a prerequisite is missing."""
    if not ok:
        if IN_CI:
            pytest.fail(f"{reason}; required under CI=true (run manifests/setup.sh)")
        pytest.skip(reason)


def tool(name):
    found = shutil.which(name)
    if not found and (TOOLS_VENV / "bin" / name).exists():
        found = str(TOOLS_VENV / "bin" / name)
    need(found, f"{name} not found on PATH or in {TOOLS_VENV}/bin")
    return found


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)


# ---------------------------------------------------------------------------------------------- discovery


def _kind_of(kustomization_dir):
    doc = yaml.safe_load((kustomization_dir / "kustomization.yaml").read_text()) or {}
    return doc.get("kind", "Kustomization")


def _all_kustomization_dirs():
    return sorted(
        p.parent
        for p in MANIFESTS.rglob("kustomization.yaml")
        if "tests" not in p.relative_to(MANIFESTS).parts
    )


def _base_for_component(component_dir):
    """The kustomization a component is meant to be layered on."""
    rel = component_dir.relative_to(MANIFESTS)
    if rel.parts[:2] == ("home-assistant", "components"):
        return MANIFESTS / "home-assistant" / "base", HA_NAMESPACE
    if rel.parts[:2] == ("iotlan", "components"):
        return MANIFESTS / "iotlan" / "base", None
    parent = component_dir.parent
    while parent != MANIFESTS and not (
        (parent / "kustomization.yaml").exists() and _kind_of(parent) == "Kustomization"
    ):
        parent = parent.parent
    return parent, None


class Target:
    """Something `kubectl kustomize` renders: a kustomization, a component on its base, or an overlay with one
    more optional component (inserted where a user would: before components/site)."""

    def __init__(self, path, component=False, extra=None):
        self.path = path
        self.component = component
        self.extra = extra
        self.id = str(path.relative_to(MANIFESTS)) + (" (on its base)" if component else "")
        if extra:
            self.id += f" + {extra.name}"

    def __repr__(self):
        return self.id

    @property
    def is_home_assistant(self):
        return self.path.relative_to(MANIFESTS).parts[0] == "home-assistant"

    @property
    def is_ha_overlay(self):
        return self.path.relative_to(MANIFESTS).parts[:2] == ("home-assistant", "overlays")


HA_COMPONENTS = MANIFESTS / "home-assistant" / "components"
SITE_COMPONENT = HA_COMPONENTS / "site"


def overlay_components(overlay_dir):
    doc = yaml.safe_load((overlay_dir / "kustomization.yaml").read_text())
    return [(overlay_dir / c).resolve() for c in doc.get("components", [])]


def optional_components():
    return sorted(d for d in HA_COMPONENTS.iterdir() if (d / "kustomization.yaml").exists() and d != SITE_COMPONENT)


def targets():
    out = []
    for d in _all_kustomization_dirs():
        out.append(Target(d, component=_kind_of(d) == "Component"))
    # every overlay with each optional component it does not already list (avoid-radio-node is multi-node's own
    # part: on one node there is no radio node to avoid)
    for d in _all_kustomization_dirs():
        if d.relative_to(MANIFESTS).parts[:2] == ("home-assistant", "overlays"):
            have = overlay_components(d)
            for c in optional_components():
                if c.resolve() not in have and c.name != "avoid-radio-node":
                    out.append(Target(d, extra=c))
    return out


TARGETS = targets()
TARGET_IDS = [t.id for t in TARGETS]


def render_text(target):
    if target.extra:
        return _render_overlay_with(target.path, target.extra)
    return _render_text(target.path, target.component)


def overlay_copy(overlay_dir, tmp, extra=None):
    """The overlay's kustomization.yaml rewritten for directory tmp, with component `extra` inserted before
    components/site (the place the README tells users to add one)."""
    doc = yaml.safe_load((overlay_dir / "kustomization.yaml").read_text())
    rel = lambda p: os.path.relpath((overlay_dir / p).resolve(), tmp)
    doc["resources"] = [rel(r) for r in doc.get("resources", [])]
    comps = [(overlay_dir / c).resolve() for c in doc.get("components", [])]
    if extra is not None:
        at = comps.index(SITE_COMPONENT) if SITE_COMPONENT in comps else len(comps)
        comps.insert(at, extra.resolve())
    doc["components"] = [os.path.relpath(c, tmp) for c in comps]
    for patch in doc.get("patches", []):
        if "path" in patch:
            patch["path"] = rel(patch["path"])
    return doc


@functools.lru_cache(maxsize=None)
def _render_overlay_with(overlay_dir, extra):
    kubectl = tool("kubectl")
    with tempfile.TemporaryDirectory(prefix="iotlan-kustomize-") as tmp:
        doc = overlay_copy(overlay_dir, tmp, extra)
        pathlib.Path(tmp, "kustomization.yaml").write_text(yaml.safe_dump(doc))
        # the copy lives in a temp dir, so an overlay's patch files (if it had any) would sit outside its root
        res = run([kubectl, "kustomize", "--load-restrictor", "LoadRestrictionsNone", tmp])
    assert res.returncode == 0, f"kubectl kustomize of {overlay_dir} + {extra} failed:\n{res.stderr}"
    return res.stdout


@functools.lru_cache(maxsize=None)
def _render_text(path, component):
    kubectl = tool("kubectl")
    if not component:
        res = run([kubectl, "kustomize", str(path)])
        assert res.returncode == 0, f"kubectl kustomize {path} failed:\n{res.stderr}"
        return res.stdout
    base, namespace = _base_for_component(path)
    with tempfile.TemporaryDirectory(prefix="iotlan-kustomize-") as tmp:
        doc = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": [os.path.relpath(base, tmp)],
            "components": [os.path.relpath(path, tmp)],
        }
        if namespace:
            doc["namespace"] = namespace
        pathlib.Path(tmp, "kustomization.yaml").write_text(yaml.safe_dump(doc))
        res = run([kubectl, "kustomize", tmp])
    assert res.returncode == 0, f"kubectl kustomize of {path} on {base} failed:\n{res.stderr}"
    return res.stdout


def render(target):
    return [d for d in yaml.safe_load_all(render_text(target)) if d]


def collect_render(target):
    """render() for building test parameters at collection time. Without kubectl (outside CI) it yields
    nothing; test_tools.py's render tests then skip with the reason (and fail under CI=true)."""
    if not IN_CI and not shutil.which("kubectl") and not (TOOLS_VENV / "bin" / "kubectl").exists():
        return []
    return render(target)


@pytest.fixture(scope="session")
def rendered_dir(tmp_path_factory):
    """Every target's render written to a file: {target.id: path}."""
    out = tmp_path_factory.mktemp("rendered")

    def path_for(target):
        p = out / (target.id.replace("/", "__").replace(" ", "_") + ".yaml")
        if not p.exists():
            p.write_text(render_text(target))
        return p

    return path_for


# --------------------------------------------------------------------------------------- object walking


def pod_template(obj):
    """(pod metadata, pod spec) of a workload object, or (None, None)."""
    kind = obj.get("kind")
    if kind == "Pod":
        return obj.get("metadata", {}), obj.get("spec", {})
    if kind == "CronJob":
        tmpl = obj["spec"]["jobTemplate"]["spec"]["template"]
    elif kind in WORKLOAD_KINDS:
        tmpl = obj["spec"]["template"]
    else:
        return None, None
    return tmpl.get("metadata", {}) or {}, tmpl["spec"]


def workloads(docs):
    for obj in docs:
        meta, spec = pod_template(obj)
        if spec is not None:
            yield obj, meta, spec


def containers(spec, init=True):
    for c in spec.get("containers", []):
        yield c, False
    if init:
        for c in spec.get("initContainers", []):
            yield c, True


def name_of(obj):
    md = obj.get("metadata", {})
    return f"{obj.get('kind')}/{md.get('namespace', '')}/{md.get('name')}"


def find(docs, kind, name=None):
    return [d for d in docs if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs, kind, name):
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected exactly one {kind}/{name}, found {len(found)}"
    return found[0]


@functools.lru_cache(maxsize=None)
def generated_secrets():
    """The Secrets manifests/home-assistant/create-secrets.sh writes (its --dry-run mode), by name."""
    tool("kubectl")
    with tempfile.TemporaryDirectory(prefix="iotlan-secrets-") as tmp:
        users = pathlib.Path(tmp, "users_database.yml")
        users.write_text("users: {}\n")
        out = pathlib.Path(tmp, "out")
        env = dict(os.environ, AUTHELIA_USERS_FILE=str(users))
        res = run(["bash", str(MANIFESTS / "home-assistant" / "create-secrets.sh"), "--dry-run", str(out)], env=env)
        assert res.returncode == 0, f"create-secrets.sh --dry-run failed:\n{res.stdout}\n{res.stderr}"
        docs = {p.stem: yaml.safe_load(p.read_text()) for p in sorted(out.glob("*.yaml"))}
        return {name: d for name, d in docs.items() if d.get("kind") == "Secret"}


@functools.lru_cache(maxsize=None)
def generated_secret_files():
    """All files create-secrets.sh --dry-run writes (Secrets, namespace, kustomization), by file name."""
    tool("kubectl")
    with tempfile.TemporaryDirectory(prefix="iotlan-secrets-") as tmp:
        users = pathlib.Path(tmp, "users_database.yml")
        users.write_text("users: {}\n")
        out = pathlib.Path(tmp, "out")
        env = dict(os.environ, AUTHELIA_USERS_FILE=str(users))
        res = run(["bash", str(MANIFESTS / "home-assistant" / "create-secrets.sh"), "--dry-run", str(out)], env=env)
        assert res.returncode == 0, res.stderr
        return {p.name: p.read_text() for p in sorted(out.iterdir())}
