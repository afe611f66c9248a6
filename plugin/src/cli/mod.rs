//! The operator's command line (everything that is not a CNI invocation).

mod access;
pub mod args;
pub mod doctor;
pub mod status;
mod validate;

pub use args::{Cli, Command};
pub use validate::validate;
