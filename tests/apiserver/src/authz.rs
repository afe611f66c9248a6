//! RBAC as the API server's authorizer judges a ServiceAccount's requests: the request's
//! attributes (verb, API group, resource, subresource, name, namespace) against the rules bound to
//! it (`plugin/pkg/auth/authorizer/rbac/rbac.go`'s `RuleAllows`).

use std::collections::BTreeMap;

use super::http::Request;

/// One RBAC policy rule as bound to the caller: `namespace` `None` for a ClusterRole bound by a
/// ClusterRoleBinding (every namespace, and cluster-scoped resources), else the one namespace.
/// `resources` may name a subresource (`serviceaccounts/token`); `resource_names`, when not
/// empty, limits the rule to requests for those objects by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RbacRule {
    pub api_groups: Vec<String>,
    pub resources: Vec<String>,
    pub resource_names: Vec<String>,
    pub verbs: Vec<String>,
    pub namespace: Option<String>,
}

/// What the RBAC authorizer judges of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attributes {
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub subresource: Option<String>,
    pub name: Option<String>,
    pub namespace: Option<String>,
}

impl Attributes {
    /// `resource/subresource`, as rules name it.
    fn combined(&self) -> String {
        match &self.subresource {
            Some(sub) => format!("{}/{sub}", self.resource),
            None => self.resource.clone(),
        }
    }
}

impl RbacRule {
    pub fn allows(&self, a: &Attributes) -> bool {
        let has = |list: &[String], want: &str| list.iter().any(|x| x == "*" || x == want);
        let combined = a.combined();
        let resource_ok = self.resources.iter().any(|r| {
            r == "*"
                || *r == combined
                || (a.subresource.is_some() && *r == format!("{}/*", a.resource))
                || a.subresource
                    .as_ref()
                    .is_some_and(|s| *r == format!("*/{s}"))
        });
        let name_ok = self.resource_names.is_empty()
            || a.name
                .as_ref()
                .is_some_and(|n| self.resource_names.contains(n));
        has(&self.api_groups, &a.group)
            && resource_ok
            && name_ok
            && has(&self.verbs, &a.verb)
            && match (&self.namespace, &a.namespace) {
                (None, _) => true,
                (Some(mine), Some(theirs)) => mine == theirs,
                (Some(_), None) => false,
            }
    }
}

/// A resource request's attributes, as the API server's request-info resolver derives them
/// (`/api/v1/...` is the core group; a GET without a name is a list, or a watch with `watch`; a
/// POST to a named object's subresource is a create of that subresource).
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
    let (resource, name, subresource) = match rest {
        [resource] => (*resource, None, None),
        [resource, name] => (*resource, Some(*name), None),
        [resource, name, sub] => (*resource, Some(*name), Some(sub.to_string())),
        _ => return None,
    };
    let watching = query.get("watch").is_some_and(|w| w == "true" || w == "1");
    let verb = match (method, name, &subresource) {
        ("GET", Some(_), _) => "get",
        ("GET", None, _) if watching => "watch",
        ("GET", None, _) => "list",
        ("POST", None, _) | ("POST", Some(_), Some(_)) => "create",
        ("PUT", Some(_), _) => "update",
        ("PATCH", Some(_), _) => "patch",
        ("DELETE", Some(_), _) => "delete",
        ("DELETE", None, _) => "deletecollection",
        _ => return None,
    };
    Some(Attributes {
        verb: verb.to_string(),
        group: group.to_string(),
        resource: resource.to_string(),
        subresource,
        name: name.map(str::to_string),
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
            let object = match &a.name {
                Some(n) if a.group.is_empty() => format!("{} \"{n}\"", a.resource),
                Some(n) => format!("{}.{} \"{n}\"", a.resource, a.group),
                None if a.group.is_empty() => a.resource.clone(),
                None => format!("{}.{}", a.resource, a.group),
            };
            format!(
                "{object} is forbidden: {user} cannot {} resource \"{}\" in API group \"{}\" {scope}",
                a.verb,
                a.combined(),
                a.group
            )
        }
        None => format!(
            "forbidden: {user} cannot {} path \"{}\"",
            req.method, req.path
        ),
    }
}
