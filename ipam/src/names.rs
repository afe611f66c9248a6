//! Validation of the names that end up in file names: network names, container IDs, interface names and
//! pod identities. Checked before any of them touches a path.

use crate::error::Error;

/// `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`, the CNI rule for container IDs (also used for network names and for
/// each half of a `namespace/name` identity).
fn is_id(s: &str) -> bool {
    let mut bytes = s.bytes();
    match bytes.next() {
        Some(b) if b.is_ascii_alphanumeric() => {}
        _ => return false,
    }
    bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

const ID_RULE: &str = "must match ^[a-zA-Z0-9][a-zA-Z0-9_.\\-]*$";

fn invalid(what: &'static str, value: &str, why: &str) -> Error {
    Error::InvalidName {
        what,
        value: value.to_string(),
        why: why.to_string(),
    }
}

/// A CNI network name (the config's `name`); it names the store's directory.
pub fn validate_network(name: &str) -> Result<(), Error> {
    if name.len() > 200 {
        return Err(invalid("network name", name, "longer than 200 bytes"));
    }
    if is_id(name) {
        Ok(())
    } else {
        Err(invalid("network name", name, ID_RULE))
    }
}

/// A container ID (`CNI_CONTAINERID`).
pub fn validate_container_id(id: &str) -> Result<(), Error> {
    if id.len() > 200 {
        return Err(invalid("container ID", id, "longer than 200 bytes"));
    }
    if is_id(id) {
        Ok(())
    } else {
        Err(invalid("container ID", id, ID_RULE))
    }
}

/// An interface name (`CNI_IFNAME`): 1 to 15 bytes, no `/`, `:` or whitespace, not `.` or `..`.
pub fn validate_ifname(name: &str) -> Result<(), Error> {
    if name.is_empty() || name.len() > 15 {
        return Err(invalid(
            "interface name",
            name,
            "must be 1 to 15 bytes long",
        ));
    }
    if name == "." || name == ".." {
        return Err(invalid("interface name", name, "must not be . or .."));
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(invalid(
            "interface name",
            name,
            "must not contain '/', ':', whitespace or control characters",
        ));
    }
    Ok(())
}

/// A pod identity: `namespace/name`, or a bare container ID when the runtime gives no pod name.
pub fn validate_identity(identity: &str) -> Result<(), Error> {
    if identity.len() > 400 {
        return Err(invalid("identity", identity, "longer than 400 bytes"));
    }
    // A pod's second interface is `namespace/name@ifname` (see the CNI layer's pool identity).
    let (pod, ifname) = match identity.split_once('@') {
        Some((pod, ifname)) => (pod, Some(ifname)),
        None => (identity, None),
    };
    let ok = match pod.split_once('/') {
        Some((ns, name)) => is_id(ns) && is_id(name),
        None => is_id(pod) && ifname.is_none(),
    } && ifname.is_none_or(|i| validate_ifname(i).is_ok());
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "identity",
            identity,
            "must be namespace/name, namespace/name@ifname or a container ID, each part matching ^[a-zA-Z0-9][a-zA-Z0-9_.\\-]*$",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids() {
        assert!(validate_container_id("abc123").is_ok());
        assert!(validate_container_id("a_b.c-d").is_ok());
        for bad in ["", "-abc", ".abc", "a/b", "a b", "../x", "a:b", "é"] {
            assert!(validate_container_id(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn ifnames() {
        assert!(validate_ifname("net1").is_ok());
        assert!(validate_ifname("eth0.100").is_ok());
        for bad in [
            "",
            "a/b",
            "a:b",
            "a b",
            "a\tb",
            "0123456789abcdef",
            ".",
            "..",
        ] {
            assert!(validate_ifname(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn identities() {
        assert!(validate_identity("home-assistant/home-assistant-0").is_ok());
        assert!(validate_identity("0123abcdef").is_ok());
        for bad in ["", "/x", "x/", "a/b/c", "../x", "a/..", "a b/c"] {
            assert!(validate_identity(bad).is_err(), "{bad:?} accepted");
        }
    }
}
