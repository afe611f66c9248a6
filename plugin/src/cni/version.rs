//! CNI spec versions and what each allows.

use crate::error::{Error, Result};

/// Versions this plugin speaks, oldest first.
pub const SUPPORTED: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The newest version, reported by VERSION when the caller names none.
pub const CURRENT: &str = "1.1.0";

/// A supported spec version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u8,
    pub minor: u8,
    pub patch: u8,
}

impl Version {
    pub fn parse(s: &str) -> Result<Version> {
        if !SUPPORTED.contains(&s) {
            return Err(Error::IncompatibleVersion(format!(
                "cniVersion {s:?} is not supported by iotlan (supported: {})",
                SUPPORTED.join(", ")
            )));
        }
        let mut parts = s.split('.').map(|p| p.parse::<u8>().unwrap_or(0));
        Ok(Version {
            major: parts.next().unwrap_or(0),
            minor: parts.next().unwrap_or(0),
            patch: parts.next().unwrap_or(0),
        })
    }

    /// 0.3.x and 0.4.0 results carry `ips[].version`.
    pub fn ips_carry_family(self) -> bool {
        self.major == 0
    }

    /// CHECK exists from 0.4.0 on.
    pub fn has_check(self) -> bool {
        self >= Version {
            major: 0,
            minor: 4,
            patch: 0,
        }
    }

    /// STATUS and GC exist from 1.1.0 on.
    pub fn has_status_and_gc(self) -> bool {
        self >= Version {
            major: 1,
            minor: 1,
            patch: 0,
        }
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The VERSION verb's answer.
pub fn version_reply(requested: Option<&str>) -> serde_json::Value {
    let version = match requested {
        Some(v) if SUPPORTED.contains(&v) => v,
        _ => CURRENT,
    };
    serde_json::json!({ "cniVersion": version, "supportedVersions": SUPPORTED })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_and_gates_verbs() {
        let v030 = Version::parse("0.3.0").unwrap();
        let v040 = Version::parse("0.4.0").unwrap();
        let v110 = Version::parse("1.1.0").unwrap();
        assert!(v030.ips_carry_family() && v040.ips_carry_family());
        assert!(!Version::parse("1.0.0").unwrap().ips_carry_family());
        assert!(!v030.has_check() && v040.has_check());
        assert!(!Version::parse("1.0.0").unwrap().has_status_and_gc() && v110.has_status_and_gc());
    }

    #[test]
    fn rejects_unknown_versions_with_code_1() {
        let err = Version::parse("0.2.0").unwrap_err();
        assert_eq!(err.code(), 1);
        assert!(err.to_string().contains("0.2.0"));
    }
}
