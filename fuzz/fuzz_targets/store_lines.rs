//! Data files: see `memtrace::fuzzing::store_files` (one data directory for the whole run).
#![no_main]

use std::{path::PathBuf, sync::OnceLock};

fn data_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // On tmpfs where there is one: the store syncs its replacements, which a disk makes slow.
        let shm = std::path::Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("memtrace-fuzz-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| memtrace::fuzzing::store_files(data, data_dir()));
