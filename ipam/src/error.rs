//! The one error type of the pool library.
//!
//! The CNI layer maps each variant to a CNI error code; [`Error::is_retryable`] tells which ones a retry
//! can fix (CNI code 11, "try again later").

use std::net::IpAddr;
use std::path::PathBuf;

use crate::addr::Family;

/// Everything that can go wrong in the pool library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The `ipam` configuration is invalid. `field` is the JSON path of the offending key, e.g.
    /// `pool[1]`, `ipv6.gateway`, `reservations["iot/esphome-0"]`, `routes[0].dst`.
    #[error("invalid ipam config: {field}: {reason}")]
    InvalidConfig { field: String, reason: String },

    /// No free address is left in the pool for this family.
    #[error("pool {pool} is exhausted: no free {family} address left among its {size}")]
    Exhausted {
        /// The network name and the subnet, e.g. `iot (192.168.20.0/24)`.
        pool: String,
        family: Family,
        /// How many addresses of this family the pool can hand out (its ranges, less exclusions).
        size: u64,
    },

    /// The address this attachment must get (its reservation or the IP it requested) is held by someone else.
    #[error("{ip} is already held by {holder_identity} (container {holder_container}, interface {holder_ifname})")]
    Conflict {
        ip: IpAddr,
        holder_identity: String,
        holder_container: String,
        holder_ifname: String,
    },

    /// The address belongs to an earlier sandbox of the same pod that may still be on the wire (its
    /// link still carries the address, or its node is not known to be gone). Taking it over would
    /// put one address on two devices, so the ADD waits for that sandbox's DEL. A retry can help.
    #[error("{} is still in use by an earlier sandbox of {} (container {}, interface {}{}): {why}; \
             retry once that sandbox is deleted", holder.ip, holder.identity, holder.container_id, holder.ifname,
             holder.node.as_ref().map(|n| format!(", node {n}")).unwrap_or_default())]
    StillInUse {
        /// The earlier sandbox's lease (boxed: the error type stays small).
        holder: Box<crate::lease::Lease>,
        why: String,
    },

    /// A requested address may not be handed to this identity (outside the subnet or the pool, excluded,
    /// the gateway, reserved for another identity, a second address of one family, ...).
    #[error("{ip} cannot be assigned: {why}")]
    NotAllowed { ip: IpAddr, why: String },

    /// A store file does not hold what it should (truncated, corrupted, or edited by hand). Never reset
    /// silently: fix or remove the named file.
    #[error("store file {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },

    /// The store could not be read or written (a full disk, a read-only file system, permissions).
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The store is locked by another process for longer than the lock timeout. A retry can help.
    #[error("store {path} is busy: its lock was not acquired within {waited_ms} ms")]
    Busy { path: PathBuf, waited_ms: u64 },

    /// The store cannot be reached right now (e.g. an API server). A retry can help.
    #[error("store unavailable: {reason}")]
    Unavailable { reason: String },

    /// A network name, container ID, interface name or identity that is not safe to use (it would end up
    /// in a file name).
    #[error("invalid {what} {value:?}: {why}")]
    InvalidName {
        what: &'static str,
        value: String,
        why: String,
    },
}

impl Error {
    /// Whether retrying the same operation later can succeed (CNI error code 11).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Busy { .. } | Error::Unavailable { .. } | Error::StillInUse { .. }
        )
    }

    /// An [`Error::InvalidConfig`] of `field`.
    pub fn config(field: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::InvalidConfig {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// An [`Error::Io`] of `op` on `path`.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// `e` and its causes, `: `-separated (a TLS or connect failure is only named deep in the chain).
pub fn with_causes(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = c.source();
    }
    s
}
