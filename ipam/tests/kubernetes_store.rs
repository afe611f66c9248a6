//! The kubernetes store against a test double of the API server (being written).
