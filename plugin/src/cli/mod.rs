//! The operator's command line (everything that is not a CNI invocation).

pub mod doctor;
pub mod status;
mod validate;

pub use validate::validate;
