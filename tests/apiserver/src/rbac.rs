//! The shipped RBAC of the iotlan ServiceAccount, read from `manifests/iotlan/namespace/rbac.yaml`
//! (it lives with the Leases' namespace, so that removing the DaemonSet's kustomization keeps the
//! ServiceAccount and its tokens), for the API server double to enforce
//! ([`super::apiserver::ApiServer::enforce`]).

use std::path::PathBuf;

use serde_json::Value;

use crate::RbacRule;

pub use crate::yaml::parse_documents;

/// The ServiceAccount the plugin and the node agent run as, and its namespace.
pub const SERVICE_ACCOUNT: &str = "iotlan";
pub const NAMESPACE: &str = "iotlan-system";

pub fn rbac_yaml() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../manifests/iotlan/namespace/rbac.yaml")
}

/// What the shipped manifests grant the iotlan ServiceAccount: the rules of every Role and
/// ClusterRole bound to it (a RoleBinding's rules only in the binding's namespace).
pub fn shipped_rules() -> Vec<RbacRule> {
    let path = rbac_yaml();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let docs = parse_documents(&text);
    let find = |kind: &str, name: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{kind} {name} is bound but not defined"))
    };
    let mut rules = Vec::new();
    for binding in &docs {
        let cluster_wide = match binding["kind"].as_str() {
            Some("ClusterRoleBinding") => true,
            Some("RoleBinding") => false,
            _ => continue,
        };
        let ours = binding["subjects"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| {
                s["kind"] == "ServiceAccount"
                    && s["name"] == SERVICE_ACCOUNT
                    && s["namespace"] == NAMESPACE
            });
        if !ours {
            continue;
        }
        let role_kind = binding["roleRef"]["kind"].as_str().expect("roleRef.kind");
        let role = find(
            role_kind,
            binding["roleRef"]["name"].as_str().expect("roleRef.name"),
        );
        let namespace = (!cluster_wide).then(|| {
            binding["metadata"]["namespace"]
                .as_str()
                .expect("a RoleBinding names its namespace")
                .to_string()
        });
        for r in role["rules"].as_array().expect("rules") {
            let list = |k: &str| -> Vec<String> {
                r[k].as_array()
                    .unwrap_or_else(|| panic!("rule without {k}: {r}"))
                    .iter()
                    .map(|v| v.as_str().expect("a string").to_string())
                    .collect()
            };
            let resource_names = match &r["resourceNames"] {
                Value::Null => Vec::new(),
                _ => list("resourceNames"),
            };
            rules.push(RbacRule {
                api_groups: list("apiGroups"),
                resources: list("resources"),
                resource_names,
                verbs: list("verbs"),
                namespace: namespace.clone(),
            });
        }
    }
    rules
}
