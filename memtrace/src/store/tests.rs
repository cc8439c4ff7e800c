use std::io::Write as _;

use serde_json::json;

use super::*;
use crate::{
    alerts::{AlertEngine, AlertEvent},
    config::{AlertingConfig, ThresholdsConfig},
    snapshot::ProcessSnapshot,
};

const DAY: u64 = 86_400_000;
/// 2024-01-15T00:00:00Z.
const JAN15: u64 = 1_705_276_800_000;

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("memtrace-store-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn store(dir: &TempDir) -> Store {
    Store::open(&dir.0, RetentionConfig::default()).unwrap()
}

fn snapshot(timestamp: u64, processes: usize) -> HostSnapshot {
    HostSnapshot {
        timestamp,
        mem_total_bytes: 16 << 30,
        mem_available_bytes: 8 << 30,
        processes: (0..processes)
            .map(|i| ProcessSnapshot {
                pid: 100 + i as u32,
                comm: format!("proc-{i}"),
                rss_bytes: timestamp % 1_000_000 + i as u64,
                ..Default::default()
            })
            .collect(),
    }
}

fn append_raw(path: &Path, bytes: &[u8]) {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap()
        .write_all(bytes)
        .unwrap();
}

fn touch(path: &Path) {
    fs::write(path, b"{}\n").unwrap();
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

fn alert_events() -> Vec<AlertEvent> {
    let mut engine = AlertEngine::with_seed(
        &ThresholdsConfig::default().with_for(0),
        &AlertingConfig::default().immediate(),
        9,
    );
    let mut events = Vec::new();
    for pid in 1..=3 {
        let p = ProcessSnapshot {
            pid,
            comm: format!("p{pid}"),
            rss_bytes: 300 << 20,
            ..Default::default()
        };
        events.extend(engine.check_thresholds(&p, JAN15 + u64::from(pid)));
    }
    let id = events[1].alert().id.clone();
    events.push(AlertEvent::Resolved(
        engine.resolve(&id, JAN15 + 10).unwrap(),
    ));
    events
}

#[test]
fn layout_names() {
    let dir = TempDir::new("layout");
    let s = store(&dir);
    let d = UtcDate::parse("2024-01-15").unwrap();
    assert_eq!(s.dir(), dir.0.as_path());
    assert_eq!(
        s.snapshots_path(d),
        dir.0.join("snapshots_2024-01-15.jsonl")
    );
    assert_eq!(s.alerts_path(), dir.0.join("alerts.jsonl"));
    assert_eq!(
        s.consumers_path(d),
        dir.0.join("memory-consumers/consumers_2024-01-15.json")
    );
    assert_eq!(
        s.operations_path(d),
        dir.0.join("memory-consumers/operations_2024-01-15.jsonl")
    );

    // Files land where the names say, dated by the record's UTC day.
    s.append_snapshot(&snapshot(JAN15 + DAY - 1, 1)).unwrap();
    s.append_snapshot(&snapshot(JAN15 + DAY, 1)).unwrap();
    s.append_alert(alert_events()[0].alert()).unwrap();
    s.write_consumers(d, &json!({"consumers": []})).unwrap();
    s.append_operations(d, &[json!({"op": "malloc", "size": 4096})])
        .unwrap();
    assert_eq!(
        names(&dir.0),
        [
            "alerts.jsonl",
            "memory-consumers",
            "snapshots_2024-01-15.jsonl",
            "snapshots_2024-01-16.jsonl"
        ]
    );
    assert_eq!(
        names(&dir.0.join("memory-consumers")),
        ["consumers_2024-01-15.json", "operations_2024-01-15.jsonl"]
    );
}

#[test]
fn open_error_names_the_path() {
    let dir = TempDir::new("open-error");
    fs::create_dir_all(&dir.0).unwrap();
    let file = dir.0.join("a-file");
    touch(&file);
    let err = Store::open(file.join("data"), RetentionConfig::default()).unwrap_err();
    assert!(matches!(err, StoreError::CreateDir { .. }));
    assert!(err.to_string().contains("a-file/data"), "{err}");
}

#[test]
fn snapshots_round_trip_newest_bounded() {
    let dir = TempDir::new("snapshots");
    let s = store(&dir);
    let all: Vec<HostSnapshot> = (0..6).map(|i| snapshot(JAN15 + i * DAY / 2, 2)).collect();
    for snap in &all {
        s.append_snapshot(snap).unwrap();
    }
    // Three days of files; the newest three snapshots span two of them.
    assert_eq!(s.load_recent_snapshots(3).unwrap(), all[3..]);
    assert_eq!(s.load_recent_snapshots(100).unwrap(), all);
    assert!(s.load_recent_snapshots(0).unwrap().is_empty());
    assert_eq!(s.corrupt_lines_total(), 0);
}

#[test]
fn snapshots_read_backward_across_chunks() {
    let dir = TempDir::new("backward");
    let s = store(&dir);
    // Lines of a few KiB, far more than one 64 KiB chunk in all.
    let all: Vec<HostSnapshot> = (0..200).map(|i| snapshot(JAN15 + i * 1000, 40)).collect();
    for snap in &all {
        s.append_snapshot(snap).unwrap();
    }
    assert!(
        fs::metadata(s.snapshots_path(UtcDate::from_unix_ms(JAN15)))
            .unwrap()
            .len()
            > 4 * BACKWARD_CHUNK
    );
    assert_eq!(s.load_recent_snapshots(1000).unwrap(), all);
    assert_eq!(s.load_recent_snapshots(57).unwrap(), all[143..]);
}

#[test]
fn corrupted_lines_are_skipped_and_counted() {
    let dir = TempDir::new("corrupt");
    let s = store(&dir);
    let path = s.snapshots_path(UtcDate::from_unix_ms(JAN15));
    s.append_snapshot(&snapshot(JAN15, 1)).unwrap();
    append_raw(
        &path,
        b"this is not json\n\n{\"timestamp\": \"wrong type\"}\n",
    );
    s.append_snapshot(&snapshot(JAN15 + 1, 1)).unwrap();
    let loaded = s.load_recent_snapshots(10).unwrap();
    assert_eq!(loaded, [snapshot(JAN15, 1), snapshot(JAN15 + 1, 1)]);
    assert_eq!(s.corrupt_lines_total(), 2);
    assert_eq!(line_number_at(&path, 0), Some(1));

    let events = alert_events();
    s.append_alert(events[0].alert()).unwrap();
    append_raw(&s.alerts_path(), b"{\"id\": \"alert_broken\"\n");
    s.append_alert(events[1].alert()).unwrap();
    assert_eq!(s.load_alerts().unwrap().len(), 2);
    assert_eq!(s.corrupt_lines_total(), 3);
}

#[test]
fn partial_last_line_is_skipped_and_never_glued_to_the_next() {
    let dir = TempDir::new("partial");
    let s = store(&dir);
    let path = s.snapshots_path(UtcDate::from_unix_ms(JAN15));
    let a = snapshot(JAN15, 3);
    let b = snapshot(JAN15 + 1, 3);
    s.append_snapshot(&a).unwrap();
    // A crash in the middle of writing b's line.
    let line = serde_json::to_vec(&b).unwrap();
    append_raw(&path, &line[..line.len() / 2]);
    assert_eq!(
        s.load_recent_snapshots(10).unwrap(),
        std::slice::from_ref(&a)
    );
    assert_eq!(s.corrupt_lines_total(), 1);

    // The next append starts on a line of its own.
    let c = snapshot(JAN15 + 2, 3);
    s.append_snapshot(&c).unwrap();
    assert_eq!(s.load_recent_snapshots(10).unwrap(), [a.clone(), c]);
    assert_eq!(s.corrupt_lines_total(), 2);

    // Alerts: same.
    let events = alert_events();
    s.append_alert(events[0].alert()).unwrap();
    let line = serde_json::to_vec(events[2].alert()).unwrap();
    append_raw(&s.alerts_path(), &line[..line.len() - 1]);
    assert_eq!(s.load_alerts().unwrap(), [events[0].alert().clone()]);
    s.append_alert(events[1].alert()).unwrap();
    assert_eq!(s.load_alerts().unwrap().len(), 2);
}

#[test]
fn alerts_fold_restores_active_ones() {
    let dir = TempDir::new("alerts-fold");
    let s = store(&dir);
    let events = alert_events();
    for event in &events {
        s.append_alert(event.alert()).unwrap();
    }
    // 3 creations and 1 resolution.
    assert_eq!(
        fs::read_to_string(s.alerts_path()).unwrap().lines().count(),
        4
    );
    let loaded = s.load_alerts().unwrap();
    assert_eq!(loaded.len(), 3);
    let resolved: Vec<&Alert> = loaded.iter().filter(|a| a.resolved).collect();
    assert_eq!(resolved.len(), 1);
    assert_eq!(resolved[0].id, events[1].alert().id);
    assert_eq!(resolved[0].resolved_at, Some(JAN15 + 10));

    let mut engine = AlertEngine::with_seed(
        &ThresholdsConfig::default().with_for(0),
        &AlertingConfig::default().immediate(),
        1,
    );
    engine.restore(loaded);
    let active: Vec<u32> = engine.active().iter().map(|a| a.context.pid).collect();
    assert_eq!(active, [3, 1]);
    assert_eq!(engine.all_recent(10).len(), 3);
    // Missing file: no alerts.
    let empty = TempDir::new("alerts-none");
    assert!(store(&empty).load_alerts().unwrap().is_empty());
}

#[test]
fn retention_prunes_by_file_date() {
    let dir = TempDir::new("retention");
    let s = store(&dir);
    let cdir = dir.0.join("memory-consumers");
    for day in ["2024-01-12", "2024-01-13", "2024-01-20"] {
        touch(&dir.0.join(format!("snapshots_{day}.jsonl")));
        touch(&cdir.join(format!("consumers_{day}.json")));
    }
    for day in ["2024-01-18", "2024-01-19", "2024-01-20"] {
        touch(&cdir.join(format!("operations_{day}.jsonl")));
    }
    // Not ours or not dated: left alone.
    touch(&dir.0.join("snapshots_old.jsonl"));
    touch(&dir.0.join("notes_2020-01-01.txt"));

    // 2024-01-20T12:00Z: 7 days back is 01-13T12:00, 24 hours back is 01-19T12:00.
    let now = JAN15 + 5 * DAY + DAY / 2;
    let report = s.prune(now).unwrap();
    assert_eq!(
        report.files_removed,
        [
            dir.0.join("memory-consumers/consumers_2024-01-12.json"),
            dir.0.join("memory-consumers/operations_2024-01-18.jsonl"),
            dir.0.join("snapshots_2024-01-12.jsonl"),
        ]
    );
    assert_eq!(
        names(&dir.0),
        [
            "memory-consumers",
            "notes_2020-01-01.txt",
            "snapshots_2024-01-13.jsonl",
            "snapshots_2024-01-20.jsonl",
            "snapshots_old.jsonl"
        ]
    );
    assert_eq!(
        names(&cdir),
        [
            "consumers_2024-01-13.json",
            "consumers_2024-01-20.json",
            "operations_2024-01-19.jsonl",
            "operations_2024-01-20.jsonl"
        ]
    );
    // Idempotent.
    assert_eq!(s.prune(now).unwrap(), PruneReport::default());
}

#[test]
fn alert_retention_keeps_recent_and_active() {
    let dir = TempDir::new("alert-retention");
    let s = store(&dir);
    let mut engine = AlertEngine::with_seed(
        &ThresholdsConfig::default().with_for(0),
        &AlertingConfig::default().immediate(),
        5,
    );
    let p = |pid| ProcessSnapshot {
        pid,
        comm: "x".into(),
        rss_bytes: 300 << 20,
        ..Default::default()
    };
    let t = JAN15;
    // pid 1: created and resolved 40 days before `now`; pid 2: resolved 10 days before;
    // pid 3: created 40 days before, still active.
    let mut events = Vec::new();
    for pid in 1..=3 {
        events.extend(engine.check_thresholds(&p(pid), t));
    }
    let ids: Vec<String> = events.iter().map(|e| e.alert().id.clone()).collect();
    events.push(AlertEvent::Resolved(
        engine.resolve(&ids[0], t + DAY).unwrap(),
    ));
    events.push(AlertEvent::Resolved(
        engine.resolve(&ids[1], t + 31 * DAY).unwrap(),
    ));
    for e in &events {
        s.append_alert(e.alert()).unwrap();
    }
    append_raw(&s.alerts_path(), b"garbage\n");

    let now = t + 41 * DAY;
    let report = s.prune(now).unwrap();
    // pid 1's two lines and the garbage line.
    assert_eq!(report.alert_lines_removed, 3);
    let left = s.load_alerts().unwrap();
    let left_ids: Vec<&str> = left.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(left.len(), 2);
    assert!(left_ids.contains(&ids[1].as_str()) && left_ids.contains(&ids[2].as_str()));
    assert!(left.iter().any(|a| a.id == ids[2] && !a.resolved));
    assert_eq!(
        fs::read_to_string(s.alerts_path()).unwrap().lines().count(),
        3
    );
    assert!(!dir.0.join("alerts.jsonl.tmp").exists());
    // Nothing more to remove: the file is not rewritten.
    assert_eq!(s.prune(now).unwrap().alert_lines_removed, 0);
}

#[test]
fn consumers_document_is_replaced_atomically() {
    let dir = TempDir::new("consumers");
    let s = store(&dir);
    let d = UtcDate::parse("2024-01-15").unwrap();
    assert_eq!(s.read_consumers(d).unwrap(), None);
    s.write_consumers(d, &json!({"version": 1})).unwrap();
    s.write_consumers(d, &json!({"version": 2, "consumers": [{"id": "libssl"}]}))
        .unwrap();
    assert_eq!(
        s.read_consumers(d).unwrap(),
        Some(json!({"version": 2, "consumers": [{"id": "libssl"}]}))
    );
    assert_eq!(
        names(&dir.0.join("memory-consumers")),
        ["consumers_2024-01-15.json"]
    );
}

#[test]
fn operations_are_appended_as_lines() {
    let dir = TempDir::new("operations");
    let s = store(&dir).with_fsync(true);
    let d = UtcDate::parse("2024-01-15").unwrap();
    s.append_operations(d, &[json!({"n": 1}), json!({"n": 2})])
        .unwrap();
    s.append_operations(d, &[]).unwrap();
    s.append_operations(d, &[json!({"n": 3})]).unwrap();
    let text = fs::read_to_string(s.operations_path(d)).unwrap();
    assert_eq!(text, "{\"n\":1}\n{\"n\":2}\n{\"n\":3}\n");
}
