//! The stores with every operation in its own process, as under a container runtime: the file store
//! (`file_store`: concurrent ADDs, a SIGKILL loop) and the Kubernetes store through the API server double
//! (`kubernetes`: concurrent ADDs from many "nodes", one address raced for, GC from another process).
//!
//! `harness = false`: the binary re-executes itself as the store's one-shot driver (support/driver.rs,
//! shared with the pool's benchmark) for each operation, so its `main` is the driver's and runs the tests
//! itself. Run: `cargo test -p iotlan-ipam --features kubernetes --test multiprocess [NAME...]`.

#[path = "../support/driver.rs"]
mod driver;

mod file_store;
#[cfg(feature = "kubernetes")]
mod kubernetes;

fn main() {
    let mut tests: Vec<(String, fn())> = Vec::new();
    let mut add = |module: &str, list: &[(&str, fn())]| {
        tests.extend(
            list.iter()
                .map(|(name, f)| (format!("{module}::{name}"), *f)),
        );
    };
    add("file_store", file_store::TESTS);
    #[cfg(feature = "kubernetes")]
    add("kubernetes", kubernetes::TESTS);
    let tests: Vec<(&str, fn())> = tests.iter().map(|(n, f)| (n.as_str(), *f)).collect();
    driver::test_main(&tests);
}
