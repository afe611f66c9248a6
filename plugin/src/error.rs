//! Every failure iotlan can report, and the one place where each maps to a CNI error code.

use std::fmt;

use iotlan_ipam::Error as PoolError;

/// Error codes defined by the CNI spec. Codes 100 and up are iotlan's own (see [`Error::code`]).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    pub const NOT_AVAILABLE_DEGRADED: u32 = 51;
    // iotlan's own codes.
    pub const LINK: u32 = 100;
    pub const MASTER: u32 = 101;
    pub const GATEWAY_UNREACHABLE: u32 = 102;
    pub const INTERFACE_EXISTS: u32 = 103;
    pub const CHECK_FAILED: u32 = 104;
    pub const NETLINK: u32 = 105;
    pub const POOL_EXHAUSTED: u32 = 110;
    pub const ADDRESS_CONFLICT: u32 = 111;
    pub const ADDRESS_NOT_ALLOWED: u32 = 112;
    pub const STORE_CORRUPT: u32 = 113;
    pub const IPAM_DELEGATE: u32 = 114;
    pub const ADDRESS_IN_USE_ON_LAN: u32 = 115;
}

/// A failure, with the context a person needs to act on it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    IncompatibleVersion(String),
    #[error("{0}")]
    UnknownContainer(String),
    #[error("{0}")]
    InvalidEnv(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Decode(String),
    #[error("{0}")]
    InvalidConfig(String),
    #[error("{0}")]
    TryAgainLater(String),
    /// STATUS: ADD cannot be served.
    #[error("{0}")]
    NotAvailable(String),
    /// STATUS: ADD cannot be served and existing attachments may have lost connectivity.
    #[error("{0}")]
    NotAvailableDegraded(String),
    /// A link could not be created or configured.
    #[error("{0}")]
    Link(String),
    #[error("{0}")]
    Master(String),
    #[error("{0}")]
    GatewayUnreachable(String),
    #[error("{0}")]
    InterfaceExists(String),
    #[error("{0}")]
    CheckFailed(String),
    #[error("{context}: {source}")]
    Netlink {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// The conflict check found `ip` in use on the LAN: a device with MAC `mac` answered its probe.
    #[error("{ip} is already in use on the LAN by the device with MAC {mac}: it answered an RFC 5227 ARP probe{hint}")]
    AddressInUseOnLan {
        ip: std::net::IpAddr,
        mac: String,
        /// What the user can do about it.
        hint: String,
    },
    /// A delegated IPAM plugin answered with an error: its code and message are passed on.
    #[error("ipam plugin {plugin}: {msg}")]
    Delegate {
        plugin: String,
        code: u32,
        msg: String,
        details: String,
    },
}

impl Error {
    /// The CNI error code for this failure. This is the only place codes are assigned.
    pub fn code(&self) -> u32 {
        use code::*;
        match self {
            Error::IncompatibleVersion(_) => INCOMPATIBLE_VERSION,
            Error::UnknownContainer(_) => UNKNOWN_CONTAINER,
            Error::InvalidEnv(_) => INVALID_ENV,
            Error::Io { .. } => IO,
            Error::Decode(_) => DECODE,
            Error::InvalidConfig(_) => INVALID_CONFIG,
            Error::TryAgainLater(_) => TRY_AGAIN_LATER,
            Error::NotAvailable(_) => NOT_AVAILABLE,
            Error::NotAvailableDegraded(_) => NOT_AVAILABLE_DEGRADED,
            Error::Link(_) => LINK,
            Error::Master(_) => MASTER,
            Error::GatewayUnreachable(_) => GATEWAY_UNREACHABLE,
            Error::InterfaceExists(_) => INTERFACE_EXISTS,
            Error::CheckFailed(_) => CHECK_FAILED,
            Error::Netlink { .. } => NETLINK,
            Error::Delegate { code, .. } => *code,
            Error::AddressInUseOnLan { .. } => ADDRESS_IN_USE_ON_LAN,
            Error::Pool(e) => pool_code(e),
        }
    }

    /// Extra detail for the error JSON's `details` field.
    pub fn details(&self) -> String {
        match self {
            Error::Io { source, .. } | Error::Netlink { source, .. } => source.to_string(),
            Error::Delegate { details, .. } => details.clone(),
            _ => String::new(),
        }
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub fn netlink(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Netlink {
            context: context.into(),
            source,
        }
    }
}

fn pool_code(e: &PoolError) -> u32 {
    use code::*;
    match e {
        PoolError::InvalidConfig { .. } | PoolError::InvalidName { .. } => INVALID_CONFIG,
        PoolError::Exhausted { .. } => POOL_EXHAUSTED,
        PoolError::Conflict { .. } => ADDRESS_CONFLICT,
        PoolError::NotAllowed { .. } => ADDRESS_NOT_ALLOWED,
        PoolError::Corrupt { .. } => STORE_CORRUPT,
        PoolError::Io { .. } => IO,
        PoolError::Busy { .. } | PoolError::Unavailable { .. } | PoolError::StillInUse { .. } => {
            TRY_AGAIN_LATER
        }
        #[allow(unreachable_patterns)]
        _ => IO,
    }
}

/// The CNI error JSON written to stdout.
#[derive(serde::Serialize)]
pub struct ErrorReply<'a> {
    #[serde(rename = "cniVersion")]
    pub cni_version: &'a str,
    pub code: u32,
    pub msg: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl<'a> ErrorReply<'a> {
    pub fn new(cni_version: &'a str, err: &Error) -> Self {
        ErrorReply {
            cni_version,
            code: err.code(),
            msg: err.to_string(),
            details: err.details(),
        }
    }
}

impl fmt::Display for ErrorReply<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match serde_json::to_string(self) {
            Ok(s) => f.write_str(&s),
            Err(_) => write!(
                f,
                "{{\"code\":{},\"msg\":\"unprintable error\"}}",
                self.code
            ),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
