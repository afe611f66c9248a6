//! The Kubernetes store against the API server double (the iotlan-apiserver-double crate), as one test
//! binary: the store's behaviour and the store contract (`store`), the takeover from a lost node
//! (`node_loss`), the double's rules for Leases as the real registry's and what the store relies on
//! (`api_rules`), requests per ADD and DEL counted per verb (`requests`), and objects written by the
//! layout before attachments were recorded (`upgrade`).
//!
//! Run: `cargo test -p iotlan-ipam --features kubernetes --test kubernetes`.

// Shared with the file store's tests (tests/store) and the node agent's (the kubernetes_* files beside
// this directory): the store contract and the fixture around the double. The fixture names the double
// and its RBAC rules from its parent module, as `apiserver` and `rbac`.
use iotlan_apiserver_double as apiserver;
use iotlan_apiserver_double::rbac;
#[macro_use]
#[path = "../support/contract.rs"]
mod contract;
#[path = "../support/kubefix.rs"]
mod kubefix;

mod api_rules;
mod node_loss;
mod requests;
mod store;
mod upgrade;
