//! Persistence: the data directory, laid out like the origin monitor's.
//!
//! ```text
//! <dataDir>/snapshots_YYYY-MM-DD.jsonl                    one HostSnapshot JSON per line (UTC day)
//! <dataDir>/alerts.jsonl                                  one Alert JSON per line: every creation
//!                                                         and every resolution
//! <dataDir>/memory-consumers/consumers_YYYY-MM-DD.json    the day's latest consumers document
//!                                                         (replaced atomically: tmp + rename)
//! <dataDir>/memory-consumers/operations_YYYY-MM-DD.jsonl  one operation record per line
//! ```
//!
//! Appends open the file in append mode and write each batch of whole lines (each ending in `\n`) with
//! one `write` call, so a crash of the agent leaves at most one partial last line. Without
//! [`Store::with_fsync`] lines are in the page cache when the call returns: they survive a crash of the
//! agent, not a crash of the machine. Before appending, a file whose last byte is not `\n` (an
//! interrupted write) gets one, so the partial line never swallows the next record.
//!
//! Loading reads each file once, a line at a time in bounded memory: corrupted lines, a partial last
//! line and lines longer than [`MAX_LINE_BYTES`] (passed over, never held whole) are skipped, counted
//! ([`Store::corrupt_lines_total`]) and reported (the first few with their line number, then one
//! summary per file); they never stop a load. Entries that are not regular files (a directory named
//! like a data file, a FIFO, a symbolic link) are skipped by loads and retention alike.
//!
//! The directory is opened once and every file relative to it, never through a symbolic link, and
//! only if it is a regular file (see `dir.rs`): a data directory owned by another user or writable by
//! every user is refused at [`Store::open`]. Write failures are counted
//! ([`Store::persist_failures_total`]).
//!
//! Retention ([`Store::prune`]): a dated file is deleted once its whole day is older than the
//! retention; `alerts.jsonl` is rewritten (tmp + rename) without the alerts resolved before the
//! retention, keeping alerts that are still active whatever their age.

mod date;
mod dir;
mod lines;

use std::{
    collections::HashMap,
    fs::File,
    io::{self, Read, Seek, Write},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex, PoisonError,
    },
};

use serde::{de::DeserializeOwned, Serialize};

pub use self::date::UtcDate;
use self::{
    dir::{Dir, EntryKind},
    lines::{line_numbers, BackwardLines, Body, ForwardLines, Line},
};
use crate::{alerts::Alert, config::RetentionConfig, snapshot::HostSnapshot};

const CONSUMERS_DIR: &str = "memory-consumers";
const ALERTS_FILE: &str = "alerts.jsonl";
const SNAPSHOTS: (&str, &str) = ("snapshots_", ".jsonl");
const CONSUMERS: (&str, &str) = ("consumers_", ".json");
const OPERATIONS: (&str, &str) = ("operations_", ".jsonl");
/// Longest line a load keeps (a host snapshot of ten thousand processes is a few MiB); longer ones
/// are passed over without being held, and counted as skipped.
pub const MAX_LINE_BYTES: usize = 16 << 20;
/// Largest consumers document read back.
const MAX_DOCUMENT_BYTES: u64 = 64 << 20;
/// Skipped lines reported one by one per file (the rest in one summary line).
const REPORTED_LINES: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create data directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "data directory {path} is owned by uid {owner}, not by the agent's uid {uid}: refused (another \
         user could plant links or replace the files the agent writes); chown it to uid {uid} or pick \
         another monitor.dataDir"
    )]
    ForeignOwner { path: PathBuf, owner: u32, uid: u32 },
    #[error(
        "data directory {path} is writable by every user (mode {mode:04o}): refused (anyone could plant \
         links or replace the files the agent writes); chmod 0700 it or pick another monitor.dataDir"
    )]
    WorldWritable { path: PathBuf, mode: u32 },
    #[error("{path} is a symbolic link: refused (the data directory's files are never followed)")]
    Symlink { path: PathBuf },
    #[error("{path} is not a regular file: refused")]
    NotRegular { path: PathBuf },
    #[error("{path} has {links} hard links: refused (it may be another file's name)")]
    HardLinked { path: PathBuf, links: u64 },
    #[error("cannot list {path}")]
    ListDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot remove {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot encode a record for {path}")]
    Encode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// What [`Store::prune`] removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PruneReport {
    pub files_removed: Vec<PathBuf>,
    pub alert_lines_removed: usize,
}

/// The data directory.
#[derive(Debug)]
pub struct Store {
    dir: Dir,
    consumers: Dir,
    retention: RetentionConfig,
    fsync: bool,
    max_line: usize,
    /// Serializes appends to `alerts.jsonl` with its rewrite by `prune`.
    alerts_lock: Mutex<()>,
    corrupt_lines_total: AtomicU64,
    persist_failures_total: AtomicU64,
}

impl Store {
    /// Opens the data directory, creating it and `memory-consumers/` (mode 0700) if needed. Refuses a
    /// directory owned by another user or writable by every user.
    pub fn open(dir: impl Into<PathBuf>, retention: RetentionConfig) -> Result<Self, StoreError> {
        let dir = Dir::open_root(&dir.into())?;
        let consumers = dir.open_subdir(CONSUMERS_DIR)?;
        Ok(Self {
            dir,
            consumers,
            retention,
            fsync: false,
            max_line: MAX_LINE_BYTES,
            alerts_lock: Mutex::new(()),
            corrupt_lines_total: AtomicU64::new(0),
            persist_failures_total: AtomicU64::new(0),
        })
    }

    /// With `true`, every append is followed by `fdatasync`, so it survives a crash of the machine too.
    pub fn with_fsync(mut self, fsync: bool) -> Self {
        self.fsync = fsync;
        self
    }

    /// Lines longer than `bytes` are skipped by loads (default [`MAX_LINE_BYTES`]).
    pub fn with_max_line(mut self, bytes: usize) -> Self {
        self.max_line = bytes;
        self
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn snapshots_path(&self, date: UtcDate) -> PathBuf {
        self.dir.path().join(dated(SNAPSHOTS, date))
    }

    pub fn alerts_path(&self) -> PathBuf {
        self.dir.path().join(ALERTS_FILE)
    }

    pub fn consumers_path(&self, date: UtcDate) -> PathBuf {
        self.consumers.path().join(dated(CONSUMERS, date))
    }

    pub fn operations_path(&self, date: UtcDate) -> PathBuf {
        self.consumers.path().join(dated(OPERATIONS, date))
    }

    /// Lines skipped by the loads so far: corrupted, partial (interrupted write) or longer than the
    /// line limit; and corrupted consumers documents.
    pub fn corrupt_lines_total(&self) -> u64 {
        self.corrupt_lines_total.load(Ordering::Relaxed)
    }

    /// Writes to the data directory that failed so far (appends of snapshots, alerts and operations,
    /// consumers documents, retention's removals and rewrite).
    pub fn persist_failures_total(&self) -> u64 {
        self.persist_failures_total.load(Ordering::Relaxed)
    }

    /// Counts a failed write.
    fn counted<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if result.is_err() {
            self.persist_failures_total.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// Appends the snapshot to the file of its UTC day.
    pub fn append_snapshot(&self, snapshot: &HostSnapshot) -> Result<(), StoreError> {
        let name = dated(SNAPSHOTS, UtcDate::from_unix_ms(snapshot.timestamp));
        self.counted(self.append_records(&self.dir, &name, std::slice::from_ref(snapshot)))
    }

    /// Appends the alert's current state to `alerts.jsonl`.
    pub fn append_alert(&self, alert: &Alert) -> Result<(), StoreError> {
        let _guard = self
            .alerts_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.counted(self.append_records(&self.dir, ALERTS_FILE, std::slice::from_ref(alert)))
    }

    /// Appends operation records to the day's operations file, all in one write.
    pub fn append_operations(
        &self,
        date: UtcDate,
        operations: &[serde_json::Value],
    ) -> Result<(), StoreError> {
        if operations.is_empty() {
            return Ok(());
        }
        self.counted(self.append_records(&self.consumers, &dated(OPERATIONS, date), operations))
    }

    /// Replaces the day's consumers document atomically (write a temporary file, sync, rename).
    pub fn write_consumers(
        &self,
        date: UtcDate,
        document: &serde_json::Value,
    ) -> Result<(), StoreError> {
        let name = dated(CONSUMERS, date);
        let result = serde_json::to_vec_pretty(document)
            .map_err(|source| StoreError::Encode {
                path: self.consumers.path().join(&name),
                source,
            })
            .and_then(|bytes| self.consumers.replace_with(&name, |f| f.write_all(&bytes)));
        self.counted(result)
    }

    /// The day's consumers document, if any (none when it is not a regular file, too large or
    /// corrupted: said in a warning).
    pub fn read_consumers(&self, date: UtcDate) -> Result<Option<serde_json::Value>, StoreError> {
        let name = dated(CONSUMERS, date);
        let path = self.consumers.path().join(&name);
        let file = match self.consumers.open_read(&name) {
            Ok(Some(file)) => file,
            Ok(None) => return Ok(None),
            Err(err @ (StoreError::NotRegular { .. } | StoreError::Symlink { .. })) => {
                log::warn!("{}, ignored", crate::error_chain(&err));
                return Ok(None);
            }
            Err(err) => return Err(err),
        };
        let mut bytes = Vec::new();
        file.take(MAX_DOCUMENT_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| StoreError::Read {
                path: path.clone(),
                source,
            })?;
        let problem = if bytes.len() as u64 > MAX_DOCUMENT_BYTES {
            format!("larger than {MAX_DOCUMENT_BYTES} bytes")
        } else {
            match serde_json::from_slice(&bytes) {
                Ok(v) => return Ok(Some(v)),
                Err(e) => format!("corrupted: {e}"),
            }
        };
        self.corrupt_lines_total.fetch_add(1, Ordering::Relaxed);
        log::warn!("{}: consumers document {problem}; ignored", path.display());
        Ok(None)
    }

    /// The newest `max_count` snapshots, oldest first. Reads the newest files backward and stops as
    /// soon as it has enough, so the cost does not grow with the history kept. A file that cannot be
    /// read is passed over with a warning.
    pub fn load_recent_snapshots(&self, max_count: usize) -> Result<Vec<HostSnapshot>, StoreError> {
        let mut out = Vec::new();
        if max_count == 0 {
            return Ok(out);
        }
        let mut files = self.dated_files(&self.dir, SNAPSHOTS)?;
        files.sort_by_key(|f| std::cmp::Reverse(f.0));
        for (_, name) in files {
            if let Err(err) = self.read_snapshots_backward(&name, max_count, &mut out) {
                log::warn!("restoring snapshots: {}", crate::error_chain(&err));
            }
            if out.len() >= max_count {
                break;
            }
        }
        out.reverse();
        Ok(out)
    }

    /// Adds the snapshots of `name`, newest first, to `out` until it holds `max_count`.
    fn read_snapshots_backward(
        &self,
        name: &str,
        max_count: usize,
        out: &mut Vec<HostSnapshot>,
    ) -> Result<(), StoreError> {
        let path = self.dir.path().join(name);
        let Some(file) = self.dir.open_read(name)? else {
            return Ok(());
        };
        let read_error = |source| StoreError::Read {
            path: path.clone(),
            source,
        };
        let len = file.metadata().map_err(read_error)?.len();
        let mut lines = BackwardLines::new(&file, len, self.max_line);
        let mut skipped = Skipped::default();
        let result = loop {
            if out.len() >= max_count {
                break Ok(());
            }
            match lines.next_line() {
                Ok(Some(line)) => {
                    if let Some(snapshot) = decode_line::<HostSnapshot>(&line, &mut skipped) {
                        out.push(snapshot);
                    }
                }
                Ok(None) => break Ok(()),
                Err(source) => break Err(read_error(source)),
            }
        };
        self.report_skipped(&path, Some(&file), skipped);
        result
    }

    /// Every alert of `alerts.jsonl` in its latest state (lines folded by id: a resolution line
    /// replaces the creation line), oldest first. Unresolved ones are the alerts to restore as active.
    pub fn load_alerts(&self) -> Result<Vec<Alert>, StoreError> {
        let _guard = self
            .alerts_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut latest: HashMap<String, Alert> = HashMap::new();
        let mut skipped = Skipped::default();
        let file = self.for_each_line(&self.dir, ALERTS_FILE, |line| {
            if let Some(alert) = decode_line::<Alert>(&line, &mut skipped) {
                latest.insert(alert.id.clone(), alert);
            }
        })?;
        self.report_skipped(&self.alerts_path(), file.as_ref(), skipped);
        let mut alerts: Vec<Alert> = latest.into_values().collect();
        alerts.sort_by(|a, b| a.timestamp.cmp(&b.timestamp).then_with(|| a.id.cmp(&b.id)));
        Ok(alerts)
    }

    /// Applies the retention at `now_ms` (milliseconds since the Unix epoch). A file that cannot be
    /// removed is reported and counted, and does not stop the others.
    pub fn prune(&self, now_ms: u64) -> Result<PruneReport, StoreError> {
        let now = i64::try_from(now_ms).unwrap_or(i64::MAX);
        let ms = |d: std::time::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let r = &self.retention;
        let mut report = PruneReport::default();
        for (dir, kind, keep) in [
            (&self.dir, SNAPSHOTS, r.snapshots()),
            (&self.consumers, CONSUMERS, r.consumers()),
            (&self.consumers, OPERATIONS, r.operations()),
        ] {
            let cutoff = now.saturating_sub(ms(keep));
            for (date, name) in self.counted(self.dated_files(dir, kind))? {
                if date.end_ms() > cutoff {
                    continue;
                }
                let path = dir.path().join(&name);
                match dir.unlink(&name) {
                    Ok(()) => report.files_removed.push(path),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(source) => {
                        self.persist_failures_total.fetch_add(1, Ordering::Relaxed);
                        let err = StoreError::Remove { path, source };
                        log::warn!("retention: {}", crate::error_chain(&err));
                    }
                }
            }
        }
        report.files_removed.sort();
        report.alert_lines_removed =
            self.counted(self.prune_alerts(now.saturating_sub(ms(r.alerts()))))?;
        Ok(report)
    }

    /// Rewrites `alerts.jsonl` without the lines of alerts resolved before `cutoff` and without
    /// skipped lines (corrupted, partial, too long). Alerts still active are kept whatever their age,
    /// so that they are restored. Two passes over the file, each a line at a time.
    fn prune_alerts(&self, cutoff: i64) -> Result<usize, StoreError> {
        let _guard = self
            .alerts_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Pass 1: each alert's latest state and its number of lines.
        let mut latest: HashMap<String, (bool, u64, usize)> = HashMap::new();
        let mut skipped = Skipped::default();
        let file = self.for_each_line(&self.dir, ALERTS_FILE, |line| {
            let Some(alert) = decode_line::<Alert>(&line, &mut skipped) else {
                return;
            };
            let last = alert.resolved_at.unwrap_or(0).max(alert.timestamp);
            let entry = latest.entry(alert.id).or_insert((false, 0, 0));
            *entry = (alert.resolved, last, entry.2 + 1);
        })?;
        let Some(file) = file else {
            return Ok(0);
        };
        let expired = |resolved: bool, last: u64| {
            resolved && i64::try_from(last).unwrap_or(i64::MAX) < cutoff
        };
        let removed = skipped.total
            + latest
                .values()
                .filter(|&&(resolved, last, _)| expired(resolved, last))
                .map(|&(_, _, lines)| lines as u64)
                .sum::<u64>();
        if skipped.total > 0 {
            log::warn!(
                "{}: {} unreadable lines dropped by retention",
                self.alerts_path().display(),
                skipped.total
            );
        }
        if removed == 0 {
            return Ok(0);
        }
        // Pass 2: copy the lines kept.
        let keep: std::collections::HashSet<String> = latest
            .into_iter()
            .filter(|(_, (resolved, last, _))| !expired(*resolved, *last))
            .map(|(id, _)| id)
            .collect();
        let max_line = self.max_line;
        self.dir.replace_with(ALERTS_FILE, |out| {
            let mut lines = ForwardLines::new(&file, max_line);
            let mut ignored = Skipped::default();
            let mut buf = Vec::new();
            (&file).rewind()?;
            while let Some(line) = lines.next_line()? {
                if let Some(alert) = decode_line::<Alert>(&line, &mut ignored) {
                    if keep.contains(&alert.id) {
                        if let Body::Bytes(bytes) = &line.body {
                            buf.extend_from_slice(bytes);
                            buf.push(b'\n');
                        }
                    }
                }
                if buf.len() >= lines::CHUNK {
                    out.write_all(&buf)?;
                    buf.clear();
                }
            }
            out.write_all(&buf)
        })?;
        Ok(usize::try_from(removed).unwrap_or(usize::MAX))
    }

    fn append_records<T: Serialize>(
        &self,
        dir: &Dir,
        name: &str,
        records: &[T],
    ) -> Result<(), StoreError> {
        let path = || dir.path().join(name);
        let mut buf = Vec::new();
        for record in records {
            serde_json::to_writer(&mut buf, record).map_err(|source| StoreError::Encode {
                path: path(),
                source,
            })?;
            buf.push(b'\n');
        }
        let file = dir.open_append(name)?;
        append(&file, buf, self.fsync).map_err(|source| StoreError::Write {
            path: path(),
            source,
        })
    }

    /// Calls `f` for each non-blank line of `name` in `dir`, in order, and returns the file (`None`
    /// when there is none). A name that is not a regular file has no lines (said in a warning).
    fn for_each_line(
        &self,
        dir: &Dir,
        name: &str,
        mut f: impl FnMut(Line),
    ) -> Result<Option<File>, StoreError> {
        let file = match dir.open_read(name) {
            Ok(Some(file)) => file,
            Ok(None) => return Ok(None),
            Err(err @ (StoreError::NotRegular { .. } | StoreError::Symlink { .. })) => {
                log::warn!("{}, ignored", crate::error_chain(&err));
                return Ok(None);
            }
            Err(err) => return Err(err),
        };
        let mut lines = ForwardLines::new(&file, self.max_line);
        while let Some(line) = lines.next_line().map_err(|source| StoreError::Read {
            path: dir.path().join(name),
            source,
        })? {
            f(line);
        }
        Ok(Some(file))
    }

    /// Counts and reports what a load of `path` skipped: the first few lines one by one (with their
    /// line numbers, found in one pass over `file` for backward reads), then a summary.
    fn report_skipped(&self, path: &Path, file: Option<&File>, skipped: Skipped) {
        if skipped.total == 0 {
            return;
        }
        self.corrupt_lines_total
            .fetch_add(skipped.total, Ordering::Relaxed);
        let unnumbered: Vec<u64> = skipped
            .first
            .iter()
            .filter(|s| s.number.is_none())
            .map(|s| s.offset)
            .collect();
        let mut found = match file {
            Some(file) if !unnumbered.is_empty() => line_numbers(file, &unnumbered)
                .unwrap_or_default()
                .into_iter(),
            _ => Vec::new().into_iter(),
        };
        for s in &skipped.first {
            let at = match s.number.or_else(|| found.next()) {
                Some(n) => format!("line {n}"),
                None => format!("at byte {}", s.offset),
            };
            log::warn!("{}: {at}: {}", path.display(), s.what);
        }
        if skipped.total > skipped.first.len() as u64 {
            log::warn!(
                "{}: {} lines skipped in all ({} corrupted, {} partial, {} longer than {} bytes)",
                path.display(),
                skipped.total,
                skipped.corrupted,
                skipped.partial,
                skipped.too_long,
                self.max_line
            );
        }
    }

    /// The regular files of `dir` named `<prefix>YYYY-MM-DD<suffix>`; other entries with such a name
    /// (a directory, a symbolic link, a FIFO) are passed over with a warning.
    fn dated_files(
        &self,
        dir: &Dir,
        (prefix, suffix): (&str, &str),
    ) -> Result<Vec<(UtcDate, String)>, StoreError> {
        let mut out = Vec::new();
        for (name, kind) in dir.list()? {
            let Some(date) = name
                .strip_prefix(prefix)
                .and_then(|n| n.strip_suffix(suffix))
                .and_then(UtcDate::parse)
            else {
                continue;
            };
            if kind != EntryKind::File {
                log::warn!(
                    "{}: not a regular file, ignored",
                    dir.path().join(&name).display()
                );
                continue;
            }
            out.push((date, name));
        }
        Ok(out)
    }
}

fn dated((prefix, suffix): (&str, &str), date: UtcDate) -> String {
    format!("{prefix}{date}{suffix}")
}

/// Lines a load skipped in one file.
#[derive(Debug, Default)]
struct Skipped {
    total: u64,
    corrupted: u64,
    partial: u64,
    too_long: u64,
    first: Vec<SkippedLine>,
}

#[derive(Debug)]
struct SkippedLine {
    offset: u64,
    number: Option<u64>,
    what: String,
}

/// Decodes one line; notes it in `skipped` and returns `None` when it cannot be used.
fn decode_line<T: DeserializeOwned>(line: &Line, skipped: &mut Skipped) -> Option<T> {
    let what = match (&line.body, line.terminated) {
        (Body::TooLong(len), _) => {
            skipped.too_long += 1;
            format!("line of {len} bytes, over the line limit, skipped (not read into memory)")
        }
        (Body::Bytes(bytes), terminated) => match serde_json::from_slice(bytes) {
            Ok(v) => return Some(v),
            Err(_) if !terminated => {
                skipped.partial += 1;
                "partial last line (interrupted write) skipped".to_string()
            }
            Err(e) => {
                skipped.corrupted += 1;
                format!("corrupted line skipped: {e}")
            }
        },
    };
    skipped.total += 1;
    if skipped.first.len() < REPORTED_LINES {
        skipped.first.push(SkippedLine {
            offset: line.offset,
            number: line.number,
            what,
        });
    }
    None
}

/// Appends `lines` (whole lines) in one write, first terminating an interrupted last line.
fn append(file: &File, mut lines: Vec<u8>, fsync: bool) -> io::Result<()> {
    let len = file.metadata()?.len();
    if len > 0 {
        let mut last = [0u8];
        file.read_exact_at(&mut last, len - 1)?;
        if last[0] != b'\n' {
            lines.insert(0, b'\n');
        }
    }
    let mut file = file;
    file.write_all(&lines)?;
    file.flush()?;
    if fsync {
        file.sync_data()?;
    }
    Ok(())
}

impl crate::alerts::AlertSink for Store {
    fn append_alert(&self, alert: &Alert) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        Store::append_alert(self, alert).map_err(Into::into)
    }
}

#[cfg(test)]
mod tests;
