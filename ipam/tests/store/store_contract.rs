//! The store contract (support/contract.rs) against the file store and the in-memory reference store.

use crate::contract;
use std::sync::Arc;
use std::time::Duration;

use iotlan_ipam::{FileStore, MemoryStore, Store};

struct FileFixture {
    dir: tempfile::TempDir,
}

impl contract::Fixture for FileFixture {
    fn store(&self) -> Box<dyn Store> {
        Box::new(FileStore::open(&self.dir.path().join("iot"), Duration::from_secs(30)).unwrap())
    }
}

struct MemoryFixture(Arc<MemoryStore>);

impl contract::Fixture for MemoryFixture {
    fn store(&self) -> Box<dyn Store> {
        Box::new(self.0.clone())
    }
}

store_contract_tests!(
    file,
    Box::new(super::FileFixture {
        dir: tempfile::tempdir().unwrap()
    })
);
store_contract_tests!(memory, Box::new(super::MemoryFixture(Default::default())));
