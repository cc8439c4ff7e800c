//! Data files: see `memtrace::fuzzing::store_files` (one data directory for the whole run).
#![no_main]

use std::{path::PathBuf, sync::OnceLock};

fn data_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("memtrace-fuzz-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| memtrace::fuzzing::store_files(data, data_dir()));
