//! The operator's command line (everything that is not a CNI invocation).

mod validate;

pub use validate::validate;
