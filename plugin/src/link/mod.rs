//! The pod's link on the IoT LAN:
//!
//! - the drivers, macvlan (the default) and ipvlan L2 (the fallback): each [`Driver`] is checked
//!   against the configuration ([`Driver::validate`]) and creates its link in the pod's namespace
//!   ([`Driver::create`]); configuring and tearing down the link inside the pod is the same for both
//!   ([`pod::configure`], [`pod::delete`]);
//! - the fallback policy ([`attach`]): the drivers to try in order ([`order`]), one attempt each
//!   (create, configure with the conflict check, probe the gateway, announce), the next one when a
//!   driver cannot work here, and the choice remembered per master ([`memory`]: a parent cannot
//!   carry macvlan and ipvlan children at once);
//! - the pod's routing ([`routing`]), the gateway probe ([`probe`]), announcements ([`announce`]),
//!   the derived MAC ([`mac`]), the master ([`master`]) and the node's shim link ([`shim`]).

pub mod announce;
pub mod attach;
pub mod ipvlan;
pub mod mac;
pub mod macvlan;
pub mod master;
pub mod memory;
pub mod pod;
pub mod probe;
pub mod routing;
pub mod shim;

use std::fmt;
use std::io;
use std::os::fd::RawFd;

use crate::config::{DriverChoice, MacvlanMode, NetConf};
use crate::error::{Error, Result};
use crate::net::netlink::{Link, Netlink};
use mac::Mac;

/// A link driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    Macvlan,
    Ipvlan,
}

impl fmt::Display for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Driver::Macvlan => "macvlan",
            Driver::Ipvlan => "ipvlan",
        })
    }
}

/// What a driver creates: the link's name, where, and with what.
pub struct Child {
    /// `CNI_IFNAME`: the kernel refuses a name the target namespace has already (EEXIST), so an
    /// earlier ADD's working interface of that name is never touched.
    pub name: String,
    /// The pod's namespace (`IFLA_NET_NS_FD`): the link is created directly inside it.
    pub netns_fd: RawFd,
    /// macvlan: the link's MAC (ipvlan links have the master's).
    pub mac: Mac,
    pub macvlan_mode: MacvlanMode,
    pub mtu: Option<u32>,
}

impl Driver {
    /// Whether this driver can serve `conf` on `master` at all, before anything is created.
    pub fn validate(self, conf: &NetConf, master: &Link) -> Result<()> {
        match (self, conf.requested_mac) {
            (Driver::Ipvlan, Some(mac)) => Err(Error::InvalidConfig(format!(
                "runtimeConfig.mac {mac} cannot be applied on master {}: ipvlan links share the master's MAC",
                master.name
            ))),
            _ => Ok(()),
        }
    }

    /// Creates the link, down, as `child` describes, as a child of `master`.
    pub fn create(
        self,
        nl: &mut Netlink,
        master: &Link,
        child: &Child,
    ) -> Result<(), CreateFailure> {
        match self {
            Driver::Macvlan => macvlan::create(nl, master, child),
            Driver::Ipvlan => ipvlan::create(nl, master, child),
        }
    }
}

/// The drivers to try, in order.
/// - A fixed choice is tried alone.
/// - `auto` tries macvlan, then ipvlan. A remembered ipvlan does not change that: while the master
///   carries ipvlan children, macvlan fails at once (EBUSY, one netlink round trip) and ipvlan
///   follows; once the last ipvlan child is gone, macvlan gets its chance again, so one missed probe
///   (a router rebooting) does not pin ipvlan on the master for good.
/// - `auto` on a Wi-Fi master goes straight to ipvlan: access points drop frames whose source MAC is
///   not the associated station's, so a macvlan would be created but never heard.
pub fn order(choice: DriverChoice, wireless_master: bool) -> Vec<Driver> {
    match choice {
        DriverChoice::Macvlan => vec![Driver::Macvlan],
        DriverChoice::Ipvlan => vec![Driver::Ipvlan],
        DriverChoice::Auto if wireless_master => vec![Driver::Ipvlan],
        DriverChoice::Auto => vec![Driver::Macvlan, Driver::Ipvlan],
    }
}

/// Why a link could not be created, in words a person can act on.
#[derive(Debug)]
pub struct CreateFailure {
    pub driver: Driver,
    /// True when another driver may work (module missing, parent busy with the other kind).
    pub other_driver_may_work: bool,
    /// The kernel answered EEXIST: most likely the name is taken in the target namespace.
    pub name_taken: bool,
    pub message: String,
}

/// Explains a kernel error from creating a `driver` child of `master`.
pub fn explain(driver: Driver, master: &str, mtu: Option<u32>, err: &io::Error) -> CreateFailure {
    let other = match driver {
        Driver::Macvlan => "ipvlan",
        Driver::Ipvlan => "macvlan",
    };
    let (other_driver_may_work, message) = match err.raw_os_error() {
        Some(libc::EOPNOTSUPP) => (
            true,
            format!("{driver} is not available in this kernel (Unknown device type: is the {driver} module installed?)"),
        ),
        Some(libc::EBUSY) => (
            true,
            format!("master {master} already carries {other} links, and a parent cannot hold {driver} and {other} children at once"),
        ),
        Some(libc::EINVAL) if mtu.is_some() => (
            false,
            format!("the kernel refused a {driver} link on {master} (EINVAL): is mtu {} larger than {master}'s mtu?", mtu.unwrap_or(0)),
        ),
        _ => (false, format!("cannot create a {driver} link on master {master}: {err}")),
    };
    CreateFailure {
        driver,
        other_driver_may_work,
        name_taken: err.raw_os_error() == Some(libc::EEXIST),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_tries_macvlan_first_except_on_wifi() {
        assert_eq!(
            order(DriverChoice::Auto, false),
            vec![Driver::Macvlan, Driver::Ipvlan]
        );
        assert_eq!(order(DriverChoice::Auto, true), vec![Driver::Ipvlan]);
        assert_eq!(order(DriverChoice::Macvlan, true), vec![Driver::Macvlan]);
        assert_eq!(order(DriverChoice::Ipvlan, false), vec![Driver::Ipvlan]);
    }

    #[test]
    fn explains_kernel_errors() {
        let f = explain(
            Driver::Ipvlan,
            "eth0",
            None,
            &io::Error::from_raw_os_error(libc::EOPNOTSUPP),
        );
        assert!(f.other_driver_may_work);
        assert!(
            f.message.contains("ipvlan is not available"),
            "{}",
            f.message
        );
        let f = explain(
            Driver::Macvlan,
            "eth0",
            None,
            &io::Error::from_raw_os_error(libc::EBUSY),
        );
        assert!(
            f.message.contains("already carries ipvlan"),
            "{}",
            f.message
        );
        let f = explain(
            Driver::Macvlan,
            "eth0",
            Some(9000),
            &io::Error::from_raw_os_error(libc::EINVAL),
        );
        assert!(!f.other_driver_may_work);
    }
}
