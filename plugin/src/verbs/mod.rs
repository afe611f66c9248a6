//! The CNI verbs, one module each.

pub mod add;
pub mod check;
pub mod del;
pub mod gc;
pub mod ipam_plugin;
pub mod status;
