//! Validation of the `ipam` config: every error names its field.

use iotlan_ipam::{open_store, Error, Family, Pool, PoolConfig};
use serde_json::{json, Value};

/// The full example of the configuration reference.
fn example() -> Value {
    json!({
        "type": "iotlan-ipam",
        "subnet": "192.168.20.0/24",
        "gateway": "192.168.20.1",
        "pool": ["192.168.20.200-192.168.20.239", "192.168.20.250/31"],
        "exclude": ["192.168.20.210"],
        "ipv6": { "subnet": "fd20::/64", "gateway": "fd20::1", "pool": ["fd20::100-fd20::1ff"], "exclude": [] },
        "reservations": {
            "home-assistant/home-assistant-0": "192.168.20.100",
            "iot/esphome-0": ["192.168.20.101", "fd20::101"]
        },
        "routes": [{ "dst": "192.168.30.0/24" }, { "dst": "192.168.40.0/24", "gw": "192.168.20.254" }],
        "dns": { "nameservers": [], "domain": "", "search": [] },
        "store": { "kind": "file", "dir": "/var/lib/cni/iotlan" },
        "someFutureKey": 1
    })
}

fn build(v: Value) -> Result<Pool, Error> {
    let cfg: PoolConfig = serde_json::from_value(v).expect("deserializes");
    Pool::new("iot", &cfg)
}

/// Applies `patch` (a JSON merge: null removes a key) to the example and expects an error on `field`
/// whose reason contains `needle`.
fn rejects(patch: Value, field: &str, needle: &str) {
    let mut v = example();
    merge(&mut v, &patch);
    match build(v) {
        Err(Error::InvalidConfig { field: f, reason }) => {
            assert_eq!(f, field, "wrong field for {patch}: {reason}");
            assert!(
                reason.contains(needle),
                "{field}: {reason:?} lacks {needle:?}"
            );
            let msg = Error::InvalidConfig { field: f, reason }.to_string();
            assert!(msg.contains(field), "{msg}");
        }
        Err(e) => panic!("{patch}: expected InvalidConfig on {field}, got {e}"),
        Ok(_) => panic!("{patch}: accepted, expected an error on {field}"),
    }
}

fn merge(a: &mut Value, b: &Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                if v.is_null() {
                    a.remove(k);
                } else {
                    merge(a.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (a, b) => *a = b.clone(),
    }
}

#[test]
fn the_reference_example_is_valid() {
    let pool = build(example()).unwrap();
    assert_eq!(pool.network(), "iot");
    assert_eq!(pool.families(), vec![Family::V4, Family::V6]);
    // 40 + 2 in the ranges, less .210 excluded; plus the two reserved v4 addresses outside the ranges.
    assert_eq!(pool.family_size(Family::V4), 41 + 2);
    // fd20::101 is reserved inside the range: 255 searchable plus the reserved one.
    assert_eq!(pool.family_size(Family::V6), 256);
    assert_eq!(pool.size(), 43 + 256);
}

#[test]
fn allocation_carries_prefix_gateway_routes_and_dns() {
    let mut v = example();
    merge(
        &mut v,
        &json!({"dns": {"nameservers": ["192.168.20.1"], "domain": "iot.lan", "search": ["lan"]}}),
    );
    let pool = build(v).unwrap();
    let lease = |ip: &str| iotlan_ipam::Lease {
        ip: ip.parse().unwrap(),
        identity: "iot/esphome-0".into(),
        container_id: "c".into(),
        ifname: "net1".into(),
        node: None,
        created_unix: 0,
        sandbox: Default::default(),
    };
    let a = pool.allocation(&[lease("fd20::101"), lease("192.168.20.101")]);
    let addrs: Vec<String> = a.addresses.iter().map(|x| x.address.to_string()).collect();
    assert_eq!(addrs, vec!["192.168.20.101/24", "fd20::101/64"]);
    assert_eq!(
        a.addresses[0].gateway,
        Some("192.168.20.1".parse().unwrap())
    );
    let routes: Vec<String> = a
        .routes
        .iter()
        .map(|r| format!("{} via {:?}", r.dst, r.gw))
        .collect();
    assert_eq!(
        routes,
        vec![
            "192.168.30.0/24 via Some(192.168.20.1)",
            "192.168.40.0/24 via Some(192.168.20.254)"
        ]
    );
    assert!(a.routes.iter().all(|r| r.dst.prefix() > 0));
    assert_eq!(a.dns.nameservers, vec!["192.168.20.1"]);
    assert_eq!(a.dns.domain.as_deref(), Some("iot.lan"));
    // An empty domain is omitted.
    assert_eq!(build(example()).unwrap().allocation(&[]).dns.domain, None);
}

#[test]
fn subnet_errors() {
    rejects(json!({"subnet": null}), "subnet", "required");
    rejects(
        json!({"subnet": "192.168.20.0"}),
        "subnet",
        "not a CIDR block",
    );
    rejects(
        json!({"subnet": "nonsense/24"}),
        "subnet",
        "not a CIDR block",
    );
    rejects(json!({"subnet": "192.168.20.7/24"}), "subnet", "host bits");
    rejects(
        json!({"subnet": "192.168.20.0/31"}),
        "subnet",
        "out of range",
    );
    rejects(json!({"subnet": "0.0.0.0/0"}), "subnet", "out of range");
}

#[test]
fn gateway_errors() {
    rejects(
        json!({"gateway": "10.0.0.1"}),
        "gateway",
        "outside the subnet",
    );
    rejects(
        json!({"gateway": "fd20::1"}),
        "gateway",
        "outside the subnet",
    );
    rejects(
        json!({"gateway": "192.168.20.0"}),
        "gateway",
        "network or broadcast",
    );
    rejects(
        json!({"gateway": "192.168.20.255"}),
        "gateway",
        "network or broadcast",
    );
    rejects(json!({"gateway": "gw"}), "gateway", "not an IP address");
    rejects(
        json!({"gateway": "192.168.20.220"}),
        "pool[0]",
        "contains the gateway",
    );
}

#[test]
fn pool_errors() {
    rejects(json!({"pool": null}), "pool", "required");
    rejects(
        json!({"pool": ["192.168.20.200-192.168.20.239", "192.168.20.250-192.168.20.240"]}),
        "pool[1]",
        "reversed",
    );
    rejects(
        json!({"pool": ["192.168.21.1-192.168.21.9"]}),
        "pool[0]",
        "outside the subnet",
    );
    rejects(
        json!({"pool": ["192.168.20.200-192.168.21.9"]}),
        "pool[0]",
        "outside the subnet",
    );
    rejects(
        json!({"pool": ["fd20::5"]}),
        "pool[0]",
        "outside the subnet",
    );
    rejects(
        json!({"pool": ["192.168.20.200-192.168.20.239", "192.168.20.224/28"]}),
        "pool[1]",
        "overlaps pool[0]",
    );
    rejects(
        json!({"pool": ["192.168.20.300"]}),
        "pool[0]",
        "not an IP address",
    );
    rejects(
        json!({"pool": ["192.168.20.0/24"]}),
        "pool[0]",
        "contains the gateway",
    );
    // Reservations only: an empty pool is fine.
    let mut v = example();
    merge(&mut v, &json!({"pool": []}));
    let pool = build(v).unwrap();
    assert_eq!(pool.family_size(Family::V4), 2);
}

#[test]
fn exclude_errors() {
    rejects(
        json!({"exclude": ["10.1.1.1"]}),
        "exclude[0]",
        "outside the subnet",
    );
    rejects(
        json!({"exclude": ["192.168.20.210", "192.168.20.9-192.168.20.1"]}),
        "exclude[1]",
        "reversed",
    );
}

#[test]
fn ipv6_block_errors() {
    rejects(
        json!({"ipv6": {"subnet": "10.0.0.0/24"}}),
        "ipv6.subnet",
        "not IPv6",
    );
    rejects(json!({"ipv6": {"subnet": null}}), "ipv6.subnet", "required");
    rejects(
        json!({"ipv6": {"gateway": "fd21::1"}}),
        "ipv6.gateway",
        "outside the subnet",
    );
    rejects(
        json!({"ipv6": {"pool": ["fd20::1ff-fd20::100"]}}),
        "ipv6.pool[0]",
        "reversed",
    );
    rejects(json!({"ipv6": {"pool": null}}), "ipv6.pool", "required");
    rejects(
        json!({"ipv6": {"exclude": ["fd21::1"]}}),
        "ipv6.exclude[0]",
        "outside the subnet",
    );
    let v6_top = json!({
        "subnet": "fd20::/64", "pool": ["fd20::100-fd20::1ff"],
        "ipv6": {"subnet": "fd21::/64", "pool": []}
    });
    match build(v6_top) {
        Err(Error::InvalidConfig { field, .. }) => assert_eq!(field, "ipv6"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn reservation_errors() {
    let f = |id: &str| format!("reservations[{id:?}]");
    rejects(
        json!({"reservations": {"a/b": "10.0.0.1"}}),
        &f("a/b"),
        "outside the subnet",
    );
    rejects(
        json!({"reservations": {"a/b": "192.168.21.1"}}),
        &f("a/b"),
        "outside the subnet",
    );
    rejects(
        json!({"reservations": {"a/b": "192.168.20.210"}}),
        &f("a/b"),
        "excluded",
    );
    rejects(
        json!({"reservations": {"a/b": "192.168.20.1"}}),
        &f("a/b"),
        "gateway",
    );
    rejects(
        json!({"reservations": {"a/b": "192.168.20.0"}}),
        &f("a/b"),
        "network address",
    );
    rejects(
        json!({"reservations": {"a/b": "192.168.20.255"}}),
        &f("a/b"),
        "broadcast",
    );
    rejects(
        json!({"reservations": {"a/b": "fd20::"}}),
        &f("a/b"),
        "network address",
    );
    rejects(
        json!({"reservations": {"a/b": ["192.168.20.5", "192.168.20.6"]}}),
        &f("a/b"),
        "one per family",
    );
    rejects(
        json!({"reservations": {"a/b": []}}),
        &f("a/b"),
        "no address",
    );
    rejects(
        json!({"reservations": {"a/b": "nope"}}),
        &f("a/b"),
        "not an IP address",
    );
    rejects(
        json!({"reservations": {"zz/other": "192.168.20.100"}}),
        &f("zz/other"),
        "also reserved for home-assistant/home-assistant-0",
    );
    rejects(
        json!({"reservations": {"../x": "192.168.20.5"}}),
        &f("../x"),
        "identity",
    );
    rejects(
        json!({"reservations": {"a/b/c": "192.168.20.5"}}),
        &f("a/b/c"),
        "identity",
    );
    let mut v = example();
    merge(&mut v, &json!({"ipv6": null}));
    rejects_in(v, &f("iot/esphome-0"), "no IPv6 subnet");
}

fn rejects_in(v: Value, field: &str, needle: &str) {
    match build(v) {
        Err(Error::InvalidConfig { field: f, reason }) => {
            assert_eq!(f, field, "{reason}");
            assert!(reason.contains(needle), "{reason}");
        }
        other => panic!("expected an error on {field}, got {other:?}"),
    }
}

#[test]
fn route_errors() {
    for default in ["0.0.0.0/0", "::/0"] {
        rejects(
            json!({"routes": [{"dst": default}]}),
            "routes[0].dst",
            "default route",
        );
    }
    rejects(
        json!({"routes": [{"dst": "192.168.30.0/24"}, {"dst": "192.168.40.0/24", "gw": "10.0.0.1"}]}),
        "routes[1].gw",
        "not on-link",
    );
    rejects(
        json!({"routes": [{"dst": "192.168.30.0"}]}),
        "routes[0].dst",
        "not a CIDR",
    );
    rejects(
        json!({"routes": [{"dst": "192.168.30.1/24"}]}),
        "routes[0].dst",
        "host bits",
    );
    rejects(
        json!({"routes": [{"dst": "10.0.0.0/8", "gw": "x"}]}),
        "routes[0].gw",
        "not an IP",
    );
    let mut v = example();
    merge(
        &mut v,
        &json!({"ipv6": null, "reservations": {"iot/esphome-0": null}}),
    );
    merge(&mut v, &json!({"routes": [{"dst": "fd99::/48"}]}));
    rejects_in(v, "routes[0].dst", "no IPv6 subnet");
}

#[test]
fn dns_errors() {
    rejects(
        json!({"dns": {"nameservers": ["192.168.20.1", "dns.example"]}}),
        "dns.nameservers[1]",
        "not an IP address",
    );
}

#[test]
fn store_and_network_errors() {
    let pool = build(example()).unwrap();
    let mut cfg: PoolConfig = serde_json::from_value(example()).unwrap();
    cfg.store.kind = "etcd".into();
    match open_store("iot", &cfg.store, &pool) {
        Err(Error::InvalidConfig { field, reason }) => {
            assert_eq!(field, "store.kind");
            assert!(reason.contains("etcd"), "{reason}");
        }
        other => panic!("{:?}", other.err()),
    }
    let cfg: PoolConfig = serde_json::from_value(example()).unwrap();
    for bad in ["", "../etc", "a/b", "-x"] {
        assert!(
            matches!(Pool::new(bad, &cfg), Err(Error::InvalidName { .. })),
            "{bad:?} accepted"
        );
    }
}

#[test]
fn store_defaults_and_extra_options() {
    let cfg: PoolConfig = serde_json::from_value(json!({
        "subnet": "192.168.20.0/24", "pool": [],
        "store": {"kind": "kubernetes", "namespace": "iotlan", "kubeconfig": "/etc/cni/net.d/iotlan.kubeconfig"}
    }))
    .unwrap();
    assert_eq!(cfg.store.kind, "kubernetes");
    assert_eq!(cfg.store.extra["namespace"], "iotlan");
    let cfg: PoolConfig =
        serde_json::from_value(json!({"subnet": "192.168.20.0/24", "pool": []})).unwrap();
    assert_eq!(cfg.store.kind, "file");
    assert_eq!(
        cfg.store.dir(),
        std::path::PathBuf::from("/var/lib/cni/iotlan")
    );
}
