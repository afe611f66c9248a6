//! MAC addresses: parsing, and the deterministic per-pod MAC that keeps a pod recognisable to the
//! router after every restart and every move between nodes.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    pub fn parse(s: &str) -> Result<Mac, String> {
        let mut out = [0u8; 6];
        let mut n = 0;
        for part in s.split([':', '-']) {
            if n == 6 || part.len() != 2 {
                return Err("expected six hex octets like 02:42:ac:11:00:02".into());
            }
            out[n] =
                u8::from_str_radix(part, 16).map_err(|_| format!("{part:?} is not a hex octet"))?;
            n += 1;
        }
        if n != 6 {
            return Err("expected six hex octets like 02:42:ac:11:00:02".into());
        }
        Ok(Mac(out))
    }

    /// A MAC an interface may carry: not multicast, not all zeros.
    pub fn parse_unicast(s: &str) -> Result<Mac, String> {
        let mac = Mac::parse(s)?;
        if mac.0[0] & 1 == 1 {
            return Err("is a multicast address; an interface needs a unicast MAC".into());
        }
        if mac.0 == [0; 6] {
            return Err("is all zeros".into());
        }
        Ok(mac)
    }

    /// A locally administered unicast MAC derived from the network name and the pod identity.
    /// The same pod gets the same MAC on every node, after every restart.
    pub fn derived(network: &str, identity: &str) -> Mac {
        let h = iotlan_ipam::addr::fnv1a64(format!("iotlan-mac\0{network}\0{identity}").as_bytes());
        let b = h.to_be_bytes();
        Mac([(b[0] & 0xfc) | 0x02, b[1], b[2], b[3], b[4], b[5]])
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_mac_is_stable_local_unicast_and_distinct() {
        let a = Mac::derived("iot", "home-assistant/home-assistant-0");
        assert_eq!(a, Mac::derived("iot", "home-assistant/home-assistant-0"));
        assert_eq!(a.0[0] & 0x03, 0x02, "locally administered, unicast");
        assert_ne!(a, Mac::derived("iot", "home-assistant/esphome-0"));
        assert_ne!(a, Mac::derived("iot2", "home-assistant/home-assistant-0"));
    }

    #[test]
    fn parses_and_prints() {
        let m = Mac::parse("C2:11:22:33:44:55").unwrap();
        assert_eq!(m.to_string(), "c2:11:22:33:44:55");
        assert!(Mac::parse("c2:11:22:33:44").is_err());
        assert!(Mac::parse("c2:11:22:33:44:55:66").is_err());
        assert!(Mac::parse_unicast("01:00:5e:00:00:fb").is_err());
    }
}
