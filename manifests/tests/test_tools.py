"""The external validators: kubectl kustomize, kubernetes-validate --strict, checkov, yamllint."""

import functools
import json
import pathlib
import re

import pytest
import yaml

from conftest import MANIFESTS, TARGET_IDS, TARGETS, generated_secrets, render, run, tool

# Kinds the Kubernetes JSON schemas do not know. kubernetes-validate only warns on them; test_networks.py and
# test_apps.py check these kinds themselves.
# (Flux Kustomization, the zalando `postgresql` and CloudNativePG `Cluster`, Gateway API's Gateway and HTTPRoute,
# cert-manager's Certificate: test_extras.py checks their required fields.)
OWN_CHECKED_KINDS = {"NetworkAttachmentDefinition", "Middleware", "Kustomization", "postgresql", "Cluster",
                     "Gateway", "HTTPRoute", "Certificate"}
K3S_ERA_VERSION = "1.30.0"


# ------------------------------------------------------------------------------------------- kustomize


def test_discovers_every_expected_kustomization():
    ids = set(TARGET_IDS)
    for expected in [
        "multus/base",
        "multus/k3s",
        "iotlan/network",
        "iotlan/network/file-store (on its base)",
        "home-assistant/base",
        "home-assistant/overlays/k3s-single-node",
        "home-assistant/overlays/multi-node",
        "flux",
    ] + [f"home-assistant/components/{c} (on its base)" for c in
         ["piper", "whisper", "node-red", "esphome", "code-server", "authelia", "site", "gateway-api",
          "cert-manager", "matter-server", "zigbee2mqtt", "zwave-js-ui",
          "bluetooth", "postgres-zalando", "postgres-cnpg", "avoid-radio-node"]]:
        assert expected in ids
    # each overlay with each optional component it does not list itself
    for overlay in ("k3s-single-node", "multi-node"):
        for c in ("gateway-api", "cert-manager", "matter-server", "bluetooth", "postgres-zalando", "postgres-cnpg"):
            assert f"home-assistant/overlays/{overlay} + {c}" in ids


@pytest.mark.parametrize("target", TARGETS, ids=TARGET_IDS)
def test_kustomize_renders(target):
    docs = render(target)
    assert docs, f"{target} rendered nothing"
    for d in docs:
        assert d.get("apiVersion") and d.get("kind") and d.get("metadata", {}).get("name"), d


# -------------------------------------------------------------------------------- kubernetes-validate


@functools.lru_cache(maxsize=None)
def bundled_versions():
    """Kubernetes versions whose schemas kubernetes-validate bundles, oldest first (asked of its interpreter)."""
    exe = tool("kubernetes-validate")
    with open(exe, "rb") as f:
        first = f.readline().decode(errors="replace").strip()
    assert first.startswith("#!"), f"{exe} is not a script"
    python = first[2:].strip().split()[0]
    res = run([python, "-c", "from kubernetes_validate.utils import all_versions; print(' '.join(all_versions()))"])
    assert res.returncode == 0, res.stderr
    return list(dict.fromkeys(res.stdout.split()))  # one entry per schema flavour (local, strict): dedupe


def validation_versions():
    versions = bundled_versions()
    assert K3S_ERA_VERSION in versions, f"kubernetes-validate no longer bundles {K3S_ERA_VERSION}: {versions}"
    return versions[-2:] + [K3S_ERA_VERSION]


def kubernetes_validate(paths, versions):
    cmd = [tool("kubernetes-validate"), "--strict"]
    for v in versions:
        cmd += ["-k", v]
    return run(cmd + [str(p) for p in paths])


@pytest.fixture(scope="session")
def validate_report(rendered_dir):
    """One kubernetes-validate run over every render and version: {file: [output lines]}."""
    paths = [rendered_dir(t) for t in TARGETS]
    res = kubernetes_validate(paths, validation_versions())
    lines = {}
    for line in res.stdout.splitlines() + res.stderr.splitlines():
        for p in paths:
            if f" {p} " in f"{line} ":
                lines.setdefault(str(p), []).append(line)
                break
        else:
            lines.setdefault("", []).append(line)
    return res, lines


@pytest.mark.parametrize("target", TARGETS, ids=TARGET_IDS)
def test_kubernetes_validate_strict(target, rendered_dir, validate_report):
    res, lines = validate_report
    mine = lines.get(str(rendered_dir(target)), [])
    assert not [ln for ln in lines.get("", []) if ln.startswith(("ERROR", "FATAL"))], lines[""]
    errors = [ln for ln in mine if not ln.startswith(("INFO", "WARN"))]
    assert not errors, "\n".join(errors)
    unknown = {m for ln in mine for m in re.findall(r"Couldn't find schema for kind (\S+)", ln)}
    assert unknown <= OWN_CHECKED_KINDS, f"kinds without a schema and without our own checks: {unknown - OWN_CHECKED_KINDS}"
    # every schema-known object really passed against each of the versions
    known = [d for d in render(target) if d["kind"] not in unknown]
    for version in validation_versions():
        short = ".".join(version.split(".")[:2])
        passed = [ln for ln in mine if ln.startswith("INFO") and ln.endswith(f"against version {short}")]
        assert len(passed) == len(known), f"{len(passed)} of {len(known)} objects passed against {version}"


def test_validation_versions_are_the_two_newest_and_a_k3s_era_one():
    versions = validation_versions()
    assert versions[:2] == bundled_versions()[-2:] and versions[2] == K3S_ERA_VERSION


def test_kubernetes_validate_catches_errors(tmp_path):
    """Negative control: the strict validator is really looking (an unknown field, a wrong type)."""
    for spec in [{"ports": [{"port": "not-a-number"}]}, {"ports": [{"port": 80, "appProtocl": "http"}]}]:
        bad = tmp_path / "bad.yaml"
        bad.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}, "spec": spec}))
        res = kubernetes_validate([bad], validation_versions())
        assert res.returncode != 0, f"accepted {spec}"


def test_generated_secrets_validate(tmp_path):
    path = tmp_path / "secrets.yaml"
    path.write_text(yaml.safe_dump_all(list(generated_secrets().values())))
    res = kubernetes_validate([path], validation_versions())
    assert res.returncode == 0 and "WARN" not in res.stdout, res.stdout + res.stderr


# ------------------------------------------------------------------------------------------------ checkov


def checkov(paths):
    """checkov with our config over files; returns (result, {file: [failed check lines]}, parse errors, passed)."""
    cmd = [tool("checkov"), "--config-file", str(MANIFESTS / ".checkov.yaml"), "-o", "json"]
    for p in paths:
        cmd += ["-f", str(p)]
    res = run(cmd)
    assert res.stdout.strip(), f"checkov printed nothing:\n{res.stderr}"
    reports = json.loads(res.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    failed = {}
    for r in reports:
        for f in r.get("results", {}).get("failed_checks", []):
            failed.setdefault(pathlib.Path(f["file_path"]).name, []).append(
                f"{f['check_id']} {f['check_name']} {f['resource']}")
    parse_errors = sum(r.get("summary", {}).get("parsing_errors", 0) for r in reports)
    passed = {}
    for r in reports:
        for f in r.get("results", {}).get("passed_checks", []):
            name = pathlib.Path(f["file_path"]).name
            passed[name] = passed.get(name, 0) + 1
    return res, failed, parse_errors, passed


@pytest.fixture(scope="session")
def checkov_report(rendered_dir):
    return checkov([rendered_dir(t) for t in TARGETS])


@pytest.mark.parametrize("target", TARGETS, ids=TARGET_IDS)
def test_checkov_passes(target, rendered_dir, checkov_report):
    res, failed, parse_errors, passed = checkov_report
    name = rendered_dir(target).name
    assert not failed.get(name), "checkov failures:\n" + "\n".join(failed[name])
    assert parse_errors == 0
    # checkov has no checks for a Namespace; the Leases' namespace has its own test (test_extras.py).
    if any(d["kind"] not in OWN_CHECKED_KINDS | {"Namespace"} for d in render(target)):
        assert passed.get(name, 0) > 0, "checkov checked nothing in this render"


def test_checkov_exit_status(checkov_report):
    res, failed, _, _ = checkov_report
    assert res.returncode == 0 and not failed, res.stderr[-2000:]


def test_checkov_catches_a_bad_pod(tmp_path):
    """Negative control: checkov with our config still flags a privileged, unbounded container."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bad", "namespace": "x"},
        "spec": {"containers": [{"name": "c", "image": "busybox:latest", "securityContext": {"privileged": True}}]},
    }))
    res, failed, _, _ = checkov([bad])
    ids = {f.split()[0] for f in failed.get("bad.yaml", [])}
    assert res.returncode != 0 and {"CKV_K8S_16", "CKV_K8S_14", "CKV_K8S_13"} <= ids, ids


SKIP_ANNOTATION = re.compile(r"^checkov\.io/skip\d+$")


@pytest.mark.parametrize("target", TARGETS, ids=TARGET_IDS)
def test_every_checkov_skip_annotation_has_a_reason(target):
    for obj in render(target):
        for key, value in (obj["metadata"].get("annotations") or {}).items():
            if key.startswith("checkov.io/"):
                assert SKIP_ANNOTATION.match(key), key
                check, sep, reason = value.partition("=")
                assert sep and re.fullmatch(r"CKV2?_K8S_\d+", check), f"{obj['metadata']['name']}: {value}"
                assert "=" not in reason, f"checkov splits on '=': {value}"
                assert len(reason.split()) >= 5, f"{obj['metadata']['name']}: {check} needs a written reason"


def test_every_global_checkov_skip_has_a_reason():
    lines = (MANIFESTS / ".checkov.yaml").read_text().splitlines()
    config = yaml.safe_load("\n".join(lines))
    assert config.get("skip-download") is True
    skips = config.get("skip-check", [])
    for check in skips:
        idx = next(i for i, line in enumerate(lines) if line.strip() == f"- {check}")
        assert lines[idx - 1].strip().startswith("#") and len(lines[idx - 1].split()) >= 6, \
            f"{check} in .checkov.yaml needs a reason comment on the line above"


# ----------------------------------------------------------------------------------------------- yamllint


def test_yamllint():
    res = run([tool("yamllint"), "-s", "-c", str(MANIFESTS / ".yamllint"), str(MANIFESTS)])
    assert res.returncode == 0, res.stdout + res.stderr
