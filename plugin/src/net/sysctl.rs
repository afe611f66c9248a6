//! Per-interface IPv6 settings inside the pod (written while the thread is in the pod's namespace).

use std::io::Write;
use std::path::Path;

use crate::config::Ipv6;

/// Applies the router-advertisement policy to `ifname`. Without `acceptRA` RAs are ignored; with it
/// SLAAC addresses and route information options (Thread border routers, Matter) are accepted, and a
/// default route only when `defaultRoute` asks for it. Hosts without IPv6 are left alone.
pub fn apply_ipv6(ifname: &str, v6: &Ipv6) -> std::io::Result<()> {
    let dir = Path::new("/proc/sys/net/ipv6/conf").join(ifname);
    if !v6.accept_ra {
        // RAs ignored altogether: the other knobs only matter when they are accepted.
        write_if_present(&dir.join("accept_ra"), "0")?;
        return Ok(());
    }
    // accept_ra 2: RAs are accepted even when something in the pod turns IPv6 forwarding on (with
    // 1 the kernel would then ignore them, and the Thread route would silently never come).
    let settings: &[(&str, &str)] = &[
        ("accept_ra", "2"),
        ("accept_ra_defrtr", if v6.default_route { "1" } else { "0" }),
        ("accept_ra_pinfo", "1"),
    ];
    for (key, value) in settings {
        write_if_present(&dir.join(key), value)?;
    }
    let rio = dir.join("accept_ra_rt_info_max_plen");
    if rio.exists() {
        write_if_present(&rio, "64")?;
    } else if dir.exists() {
        tracing::warn!(%ifname, "this kernel has no route information option support \
            (CONFIG_IPV6_ROUTE_INFO): routes that Thread border routers announce will not be taken");
    }
    Ok(())
}

/// Makes the kernel announce the link's addresses when it comes up: a gratuitous ARP per IPv4
/// address (arp_notify) and an unsolicited neighbour advertisement per IPv6 address (ndisc_notify).
pub fn enable_announcements(ifname: &str) -> std::io::Result<()> {
    let v4 = Path::new("/proc/sys/net/ipv4/conf")
        .join(ifname)
        .join("arp_notify");
    std::fs::OpenOptions::new()
        .write(true)
        .open(v4)?
        .write_all(b"1")?;
    write_if_present(
        &Path::new("/proc/sys/net/ipv6/conf")
            .join(ifname)
            .join("ndisc_notify"),
        "1",
    )?;
    Ok(())
}

/// Lets IPv6 duplicate address detection run on `ifname` with optimistic addresses (RFC 4429):
/// a duplicate is found by the kernel (the address turns `dadfailed`) while the pod can already use it.
pub fn enable_optimistic_dad(ifname: &str) -> std::io::Result<()> {
    let dir = Path::new("/proc/sys/net/ipv6/conf").join(ifname);
    write_if_present(&dir.join("optimistic_dad"), "1")?;
    write_if_present(&dir.join("use_optimistic"), "1")
}

/// Makes `ifname` answer ARP only for the addresses it carries itself (`arp_ignore` 1), unless it
/// is already at least that strict. By default Linux answers on every interface for every address
/// of the host, so with the host shim both the NIC and the shim would answer for the node's
/// address and for the shim's, and the router's entry could flip between the two MACs. Returns
/// whether it changed the setting.
pub fn arp_answers_own_addresses_only(ifname: &str) -> std::io::Result<bool> {
    let path = Path::new("/proc/sys/net/ipv4/conf")
        .join(ifname)
        .join("arp_ignore");
    let now = std::fs::read_to_string(&path)?;
    if now.trim().parse::<u32>().unwrap_or(0) >= 1 {
        return Ok(false);
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)?
        .write_all(b"1")?;
    Ok(true)
}

/// Writes a sysctl; one that does not exist (no IPv6 on this host, an older kernel) is skipped.
fn write_if_present(path: &Path, value: &str) -> std::io::Result<()> {
    match std::fs::OpenOptions::new().write(true).open(path) {
        Ok(mut f) => f.write_all(value.as_bytes()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}
