use std::collections::BTreeMap;

use super::*;

/// A lock-free store where another node wins the race for the first `lose` claims.
#[derive(Default)]
struct Racy {
    held: BTreeMap<IpAddr, Lease>,
    lose: usize,
    lost: Vec<IpAddr>,
}

impl Claims for Racy {
    fn held_by(&mut self, att: &Attachment) -> Result<Vec<Lease>, Error> {
        Ok(self
            .held
            .values()
            .filter(|l| l.is_held_by(att))
            .cloned()
            .collect())
    }
    fn previous(&mut self, _: &str) -> Result<Vec<IpAddr>, Error> {
        Ok(vec![])
    }
    fn holder(&mut self, ip: IpAddr) -> Result<Option<Lease>, Error> {
        Ok(self.held.get(&ip).cloned())
    }
    fn claim(&mut self, lease: &Lease, _: Option<&Lease>) -> Result<Option<Lease>, Error> {
        if let Some(h) = self.held.get(&lease.ip) {
            return Ok(Some(h.clone()));
        }
        if self.lost.len() < self.lose {
            self.lost.push(lease.ip);
            let other = Lease {
                identity: "other/node".into(),
                container_id: format!("other{}", self.lost.len()),
                ..lease.clone()
            };
            self.held.insert(lease.ip, other.clone());
            return Ok(Some(other));
        }
        self.held.insert(lease.ip, lease.clone());
        Ok(None)
    }
    fn finish(&mut self, _: &AllocRequest, _: &[Lease]) -> Result<(), Error> {
        Ok(())
    }
    fn abandon(&mut self, claimed: &[Claimed]) -> Result<(), Error> {
        for c in claimed {
            self.held.remove(&c.lease.ip);
        }
        Ok(())
    }
}

fn pool() -> Pool {
    let cfg = serde_json::from_value(serde_json::json!({
        "subnet": "10.0.0.0/24", "pool": ["10.0.0.10-10.0.0.12"],
        "reservations": { "ns/r": "10.0.0.5" }
    }))
    .unwrap();
    Pool::new("net", &cfg).unwrap()
}

fn req(identity: &str) -> AllocRequest {
    AllocRequest {
        identity: identity.into(),
        attachment: Attachment::new("c1", "net1"),
        ..AllocRequest::default()
    }
}

#[test]
fn a_lost_race_moves_the_search_on() {
    let pool = pool();
    let walk: Vec<IpAddr> = pool.candidates(Family::V4, "ns/a").collect();
    let mut racy = Racy {
        lose: 2,
        ..Racy::default()
    };
    let got = allocate(&pool, &req("ns/a"), None, &mut racy, &NeverGone)
        .unwrap()
        .leases;
    assert_eq!(racy.lost, walk[..2]);
    assert_eq!(got[0].ip, walk[2]);
}

#[test]
fn a_lost_race_for_a_fixed_address_is_a_conflict() {
    let pool = pool();
    let mut racy = Racy {
        lose: 1,
        ..Racy::default()
    };
    match allocate(&pool, &req("ns/r"), None, &mut racy, &NeverGone) {
        Err(Error::Conflict {
            holder_identity, ..
        }) => assert_eq!(holder_identity, "other/node"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn exhausted_when_every_race_is_lost() {
    let pool = pool();
    let mut racy = Racy {
        lose: 3,
        ..Racy::default()
    };
    let e = allocate(&pool, &req("ns/a"), None, &mut racy, &NeverGone).unwrap_err();
    assert!(matches!(e, Error::Exhausted { size: 4, .. }), "{e}");
}
