//! The node agent's tests, in one test binary (each binary is linked on its own, which is slow on a
//! small machine):
//! - [`install`], [`credentials`], [`passes`], [`loops`]: the real `iotlan install`, run as the
//!   DaemonSet runs it on a fake node ([`host::Host`]), the plugin exec'd as a runtime does;
//! - [`reconcile`], [`node_files`], [`reassert`]: the agent's passes as a library, against the API
//!   server double ([`fixture`]).
//!
//! The binaries are this build's ([`bins`]): `cargo test --workspace` builds them; alone, run
//! `cargo build --release -p iotlan` first (or set `IOTLAN_BIN_DIR`). Needs no root.

mod bins;
mod host;
mod install;

#[cfg(feature = "kubernetes")]
mod credentials;
#[cfg(feature = "kubernetes")]
mod fixture;
#[cfg(feature = "kubernetes")]
mod loops;
#[cfg(feature = "kubernetes")]
mod node_files;
#[cfg(feature = "kubernetes")]
mod passes;
#[cfg(feature = "kubernetes")]
mod reassert;
#[cfg(feature = "kubernetes")]
mod reconcile;
