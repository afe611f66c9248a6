//! Real-runtime tests (being written).
