//! Per-interface IPv6 settings inside the pod (written while the thread is in the pod's namespace).

use std::path::Path;

use crate::config::Ipv6;

/// Applies the router-advertisement policy to `ifname`. Without `acceptRA` RAs are ignored; with it
/// SLAAC addresses and route information options (Thread border routers, Matter) are accepted, and a
/// default route only when `defaultRoute` asks for it. Hosts without IPv6 are left alone.
pub fn apply_ipv6(ifname: &str, v6: &Ipv6) -> std::io::Result<()> {
    let dir = Path::new("/proc/sys/net/ipv6/conf").join(ifname);
    if !dir.exists() {
        return Ok(());
    }
    let on = |b: bool| if b { "1" } else { "0" };
    let settings: &[(&str, &str)] = &[
        ("accept_ra", on(v6.accept_ra)),
        ("accept_ra_defrtr", on(v6.accept_ra && v6.default_route)),
        ("accept_ra_pinfo", on(v6.accept_ra)),
        (
            "accept_ra_rt_info_max_plen",
            if v6.accept_ra { "64" } else { "0" },
        ),
    ];
    for (key, value) in settings {
        let path = dir.join(key);
        if path.exists() {
            std::fs::write(&path, value)?;
        }
    }
    Ok(())
}

/// Makes the kernel announce the link's addresses when it comes up: a gratuitous ARP per IPv4
/// address (arp_notify) and an unsolicited neighbour advertisement per IPv6 address (ndisc_notify).
pub fn enable_announcements(ifname: &str) -> std::io::Result<()> {
    std::fs::write(
        Path::new("/proc/sys/net/ipv4/conf")
            .join(ifname)
            .join("arp_notify"),
        "1",
    )?;
    let v6 = Path::new("/proc/sys/net/ipv6/conf")
        .join(ifname)
        .join("ndisc_notify");
    if v6.exists() {
        std::fs::write(v6, "1")?;
    }
    Ok(())
}
