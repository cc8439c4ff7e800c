//! The bodies of the fuzz targets (`fuzz/fuzz_targets/<target>.rs` only call these), so that every
//! input kept in `fuzz/regressions/<target>/` (crashes found and fixed) and `fuzz/seeds/<target>/`
//! replays as a unit test. None of them may panic, whatever the input.

use std::path::Path;

use crate::{
    accounting::{Accounting, NoSource},
    config::{Config, RetentionConfig},
    events,
    store::{Store, UtcDate},
};

/// `event_decode`: one record of any length through [`events::decode`], then the input cut into
/// records of the event's size applied to an accounting as the agent applies a batch (heap,
/// mappings, brk, exits), each process snapshotted.
pub fn event_batch(data: &[u8]) {
    let _ = events::decode(data);
    let batch: events::Batch = data
        .chunks(memtrace_common::EVENT_SIZE)
        .filter_map(|record| events::decode(record).ok())
        .collect();
    let mut accounting = Accounting::new(Box::new(NoSource)).with_operations(1024, 64);
    accounting.set_trace_all(data.first().is_some_and(|b| b & 1 == 1));
    accounting.apply_batch(&batch);
    let pids: Vec<u32> = accounting.processes().map(|p| p.pid).collect();
    for pid in pids {
        let _ = accounting.snapshot(pid);
    }
    let _ = accounting.take_new_operations();
}

/// 2024-01-15T12:00:00Z: the day of the snapshots file [`store_files`] writes.
const STORE_NOW_MS: u64 = 1_705_320_000_000;

/// `store_lines`: the input (after a first byte that sets the line limit and the number of
/// snapshots asked for) as that day's snapshots file and as `alerts.jsonl` of the data directory
/// `dir`, loaded (snapshots backward, alerts forward) and pruned (the alerts rewrite), as the agent
/// does at start and once a day.
pub fn store_files(data: &[u8], dir: &Path) {
    let Some((&knobs, lines)) = data.split_first() else {
        return;
    };
    let Ok(store) = Store::open(dir, RetentionConfig::default()) else {
        return;
    };
    let store = store.with_max_line(usize::from(knobs & 0x3f) * 16 + 1);
    let day = UtcDate::from_unix_ms(STORE_NOW_MS);
    for path in [store.snapshots_path(day), store.alerts_path()] {
        if std::fs::write(&path, lines).is_err() {
            return;
        }
    }
    let _ = store.load_recent_snapshots(usize::from(knobs >> 6) * 3 + 1);
    let _ = store.load_alerts();
    let _ = store.prune(STORE_NOW_MS);
    let _ = store.load_alerts();
}

/// `config_toml`: any text through [`Config::from_toml_str`] (parse and validate).
pub fn config_toml(text: &str) {
    let _ = Config::from_toml_str(text);
}

/// `http_query`: any text through [`crate::http::check_query`]; what passes is within the routes'
/// bounds.
pub fn http_query(query: &str) {
    if let Ok(params) = crate::http::check_query(query) {
        assert!(
            (1..=10_000).contains(&params.count),
            "{query:?}: {params:?}"
        );
        assert!(
            (1..=10_080).contains(&params.minutes),
            "{query:?}: {params:?}"
        );
        assert!(
            params.pid.is_none_or(|p| (1..=4_194_304).contains(&p)),
            "{query:?}: {params:?}"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    /// The files kept for `target`: crash inputs (`fuzz/regressions/`) and seeds (`fuzz/seeds/`).
    fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
        let mut out = Vec::new();
        for kind in ["regressions", "seeds"] {
            let Ok(entries) = std::fs::read_dir(root.join(kind).join(target)) else {
                continue;
            };
            for entry in entries {
                let path = entry.unwrap().path();
                let bytes = std::fs::read(&path).unwrap();
                out.push((path, bytes));
            }
        }
        out.sort();
        assert!(!out.is_empty(), "no seeds for {target}");
        out
    }

    /// Guards the crashes the fuzzer found (their inputs are in `fuzz/regressions/event_decode/`):
    /// a `mmap` event of a length near 2^64 overflowed the page rounding.
    #[test]
    fn event_decode_inputs_replay() {
        for (path, bytes) in inputs("event_decode") {
            eprintln!("{}", path.display());
            event_batch(&bytes);
        }
    }

    #[test]
    fn store_lines_inputs_replay() {
        let dir = std::env::temp_dir().join(format!("memtrace-fuzz-replay-{}", std::process::id()));
        for (path, bytes) in inputs("store_lines") {
            eprintln!("{}", path.display());
            let _ = std::fs::remove_dir_all(&dir);
            store_files(&bytes, &dir);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn config_toml_inputs_replay() {
        for (path, bytes) in inputs("config_toml") {
            eprintln!("{}", path.display());
            if let Ok(text) = std::str::from_utf8(&bytes) {
                config_toml(text);
            }
        }
    }

    #[test]
    fn http_query_inputs_replay() {
        for (path, bytes) in inputs("http_query") {
            eprintln!("{}", path.display());
            if let Ok(text) = std::str::from_utf8(&bytes) {
                http_query(text);
            }
        }
    }
}
