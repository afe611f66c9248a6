"""Multus thick plugin: the kubeadm and k3s variants point at the right host CNI paths."""

import json

import pytest

from conftest import TARGETS, one, render

BY_ID = {t.id: t for t in TARGETS}
PATHS = {
    "multus/base": ("/etc/cni/net.d", "/opt/cni/bin"),
    "multus/k3s": ("/var/lib/rancher/k3s/agent/etc/cni/net.d", "/var/lib/rancher/k3s/data/cni"),
}


@pytest.mark.parametrize("tid", sorted(PATHS))
def test_multus_uses_the_distribution_cni_paths(tid):
    docs = render(BY_ID[tid])
    conf_dir, bin_dir = PATHS[tid]
    ds = one(docs, "DaemonSet", "kube-multus-ds")
    spec = ds["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["cni"]["hostPath"]["path"] == conf_dir
    assert volumes["cnibin"]["hostPath"]["path"] == bin_dir
    daemon = spec["containers"][0]
    mounts = {m["name"]: m["mountPath"] for m in daemon["volumeMounts"]}
    # the daemon expects the CNI bin dir at the same path inside the pod as on the host
    assert mounts["cnibin"] == bin_dir
    cm_name = volumes["multus-daemon-config"]["configMap"]["name"]
    config = json.loads(one(docs, "ConfigMap", cm_name)["data"]["daemon-config.json"])
    assert config["cniConfigDir"] == mounts["cni"] == config["multusAutoconfigDir"]
    assert config.get("binDir", "/opt/cni/bin") == bin_dir
    assert config["chrootDir"] == mounts["hostroot"] and volumes["hostroot"]["hostPath"]["path"] == "/"
    init = spec["initContainers"][0]
    assert init["image"] == daemon["image"] and daemon["image"].endswith("-thick")
    init_mount = {m["name"]: m["mountPath"] for m in init["volumeMounts"]}["cnibin"]
    assert init["command"][init["command"].index("-d") + 1] == init_mount


@pytest.mark.parametrize("tid", sorted(PATHS))
def test_multus_runs_on_tainted_nodes_and_has_the_crd(tid):
    docs = render(BY_ID[tid])
    spec = one(docs, "DaemonSet", "kube-multus-ds")["spec"]["template"]["spec"]
    effects = {t["effect"] for t in spec["tolerations"] if t.get("operator") == "Exists" and "key" not in t}
    assert {"NoSchedule", "NoExecute"} <= effects, "must also run on the tainted radio node"
    crd = one(docs, "CustomResourceDefinition", "network-attachment-definitions.k8s.cni.cncf.io")
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert schema["properties"]["spec"]["properties"]["config"]["type"] == "string"
    rules = one(docs, "ClusterRole", "multus")["rules"]
    assert not [r for r in rules if "*" in r["verbs"] or "*" in r["resources"]], "least privilege"
    assert all(d["metadata"].get("namespace") in (None, "kube-system") for d in docs)
