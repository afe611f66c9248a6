//! Shared helpers for the root-only integration tests.
