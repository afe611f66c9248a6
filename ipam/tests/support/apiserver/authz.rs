//! RBAC as the API server's authorizer judges a ServiceAccount's requests: the request's
//! attributes (verb, API group, resource, namespace) against the rules bound to it.

use std::collections::BTreeMap;

use super::http::Request;

/// One RBAC policy rule as bound to the caller: `namespace` `None` for a ClusterRole bound by a
/// ClusterRoleBinding (every namespace, and cluster-scoped resources), else the one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RbacRule {
    pub api_groups: Vec<String>,
    pub resources: Vec<String>,
    pub verbs: Vec<String>,
    pub namespace: Option<String>,
}

/// What the RBAC authorizer judges of a request: verb, API group, resource, namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attributes {
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub namespace: Option<String>,
}

impl RbacRule {
    pub fn allows(&self, a: &Attributes) -> bool {
        let has = |list: &[String], want: &str| list.iter().any(|x| x == "*" || x == want);
        has(&self.api_groups, &a.group)
            && has(&self.resources, &a.resource)
            && has(&self.verbs, &a.verb)
            && match (&self.namespace, &a.namespace) {
                (None, _) => true,
                (Some(mine), Some(theirs)) => mine == theirs,
                (Some(_), None) => false,
            }
    }
}

/// A resource request's attributes, as the API server's request-info resolver derives them
/// (`/api/v1/...` is the core group; a GET without a name is a list, or a watch with `watch`).
pub fn attributes(
    method: &str,
    segs: &[&str],
    query: &BTreeMap<String, String>,
) -> Option<Attributes> {
    let (group, rest) = match segs {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        _ => (None, rest),
    };
    let (resource, name) = match rest {
        [resource] => (*resource, None),
        [resource, name] => (*resource, Some(*name)),
        _ => return None,
    };
    let watching = query.get("watch").is_some_and(|w| w == "true" || w == "1");
    let verb = match (method, name) {
        ("GET", Some(_)) => "get",
        ("GET", None) if watching => "watch",
        ("GET", None) => "list",
        ("POST", None) => "create",
        ("PUT", Some(_)) => "update",
        ("PATCH", Some(_)) => "patch",
        ("DELETE", Some(_)) => "delete",
        ("DELETE", None) => "deletecollection",
        _ => return None,
    };
    Some(Attributes {
        verb: verb.to_string(),
        group: group.to_string(),
        resource: resource.to_string(),
        namespace,
    })
}

pub(super) fn forbidden_message(a: Option<&Attributes>, req: &Request) -> String {
    let user = "User \"system:serviceaccount:iotlan-system:iotlan\"";
    match a {
        Some(a) => {
            let scope = match &a.namespace {
                Some(ns) => format!("in the namespace \"{ns}\""),
                None => "at the cluster scope".to_string(),
            };
            format!(
                "{}.{} is forbidden: {user} cannot {} resource \"{}\" in API group \"{}\" {scope}",
                a.resource, a.group, a.verb, a.resource, a.group
            )
        }
        None => format!(
            "forbidden: {user} cannot {} path \"{}\"",
            req.method, req.path
        ),
    }
}
