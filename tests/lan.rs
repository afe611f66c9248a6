//! Simulated-LAN tests (being written).
