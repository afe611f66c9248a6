//! The iotlan node agent: what the DaemonSet's pod runs on every node (`iotlan install`).
//!
//! - [`install`]: puts the plugin on its node (the host's CNI dirs, kubeadm or k3s), keeps the
//!   plugin's kubeconfig (a TokenRequest token that outlives the agent's pod) and the node's name
//!   current, touches a health file, and runs the passes below on an interval;
//! - [`reconcile`]: frees the leases of pods that no longer exist, in the cluster's `kubernetes`
//!   store and in the file stores on this node, and prunes unused sticky records;
//! - [`reassert`]: recreates the Leases of this node's attachments that were lost, and reports an
//!   address held twice as a `DuplicateAddress` Event ([`events`], which `iotlan status` reads);
//! - the hostShim repair pass, whose kernel work the `iotlan` binary lends it ([`install::Hooks`]).
//!
//! The pool and its stores are `iotlan-ipam`'s; the agent only uses them.

#[cfg(feature = "kubernetes")]
pub mod events;
pub mod install;
#[cfg(feature = "kubernetes")]
pub mod reassert;
#[cfg(feature = "kubernetes")]
pub mod reconcile;
