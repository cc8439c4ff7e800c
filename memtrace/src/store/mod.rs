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
//! Loading skips corrupted lines and a partial last line with a warning that names the file and the
//! line number, and counts them ([`Store::corrupt_lines_total`]); it never fails because of them.
//!
//! Retention ([`Store::prune`]): a dated file is deleted once its whole day is older than the
//! retention; `alerts.jsonl` is rewritten (tmp + rename) without the alerts resolved before the
//! retention, keeping alerts that are still active whatever their age.

mod date;

use std::{
    collections::{HashMap, HashSet},
    fs::{self, File, OpenOptions},
    io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex, PoisonError,
    },
};

use serde::{de::DeserializeOwned, Serialize};

pub use self::date::UtcDate;
use crate::{alerts::Alert, config::RetentionConfig, snapshot::HostSnapshot};

const CONSUMERS_DIR: &str = "memory-consumers";
const ALERTS_FILE: &str = "alerts.jsonl";
const SNAPSHOTS: (&str, &str) = ("snapshots_", ".jsonl");
const CONSUMERS: (&str, &str) = ("consumers_", ".json");
const OPERATIONS: (&str, &str) = ("operations_", ".jsonl");
/// Bytes read at a time when reading a file backward.
const BACKWARD_CHUNK: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create data directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
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
    dir: PathBuf,
    consumers_dir: PathBuf,
    retention: RetentionConfig,
    fsync: bool,
    /// Serializes appends to `alerts.jsonl` with its rewrite by `prune`.
    alerts_lock: Mutex<()>,
    corrupt_lines_total: AtomicU64,
}

impl Store {
    /// Opens the data directory, creating it and `memory-consumers/` if needed.
    pub fn open(dir: impl Into<PathBuf>, retention: RetentionConfig) -> Result<Self, StoreError> {
        let dir = dir.into();
        let consumers_dir = dir.join(CONSUMERS_DIR);
        for path in [&dir, &consumers_dir] {
            fs::create_dir_all(path).map_err(|source| StoreError::CreateDir {
                path: path.clone(),
                source,
            })?;
        }
        Ok(Self {
            dir,
            consumers_dir,
            retention,
            fsync: false,
            alerts_lock: Mutex::new(()),
            corrupt_lines_total: AtomicU64::new(0),
        })
    }

    /// With `true`, every append is followed by `fdatasync`, so it survives a crash of the machine too.
    pub fn with_fsync(mut self, fsync: bool) -> Self {
        self.fsync = fsync;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn snapshots_path(&self, date: UtcDate) -> PathBuf {
        dated(&self.dir, SNAPSHOTS, date)
    }

    pub fn alerts_path(&self) -> PathBuf {
        self.dir.join(ALERTS_FILE)
    }

    pub fn consumers_path(&self, date: UtcDate) -> PathBuf {
        dated(&self.consumers_dir, CONSUMERS, date)
    }

    pub fn operations_path(&self, date: UtcDate) -> PathBuf {
        dated(&self.consumers_dir, OPERATIONS, date)
    }

    /// Corrupted and partial lines skipped by the loads so far.
    pub fn corrupt_lines_total(&self) -> u64 {
        self.corrupt_lines_total.load(Ordering::Relaxed)
    }

    /// Appends the snapshot to the file of its UTC day.
    pub fn append_snapshot(&self, snapshot: &HostSnapshot) -> Result<(), StoreError> {
        let path = self.snapshots_path(UtcDate::from_unix_ms(snapshot.timestamp));
        self.append_records(&path, std::slice::from_ref(snapshot))
    }

    /// Appends the alert's current state to `alerts.jsonl`.
    pub fn append_alert(&self, alert: &Alert) -> Result<(), StoreError> {
        let path = self.alerts_path();
        let _guard = self
            .alerts_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.append_records(&path, std::slice::from_ref(alert))
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
        self.append_records(&self.operations_path(date), operations)
    }

    /// Replaces the day's consumers document atomically (write a temporary file, sync, rename).
    pub fn write_consumers(
        &self,
        date: UtcDate,
        document: &serde_json::Value,
    ) -> Result<(), StoreError> {
        let path = self.consumers_path(date);
        let bytes = serde_json::to_vec_pretty(document).map_err(|source| StoreError::Encode {
            path: path.clone(),
            source,
        })?;
        replace_atomically(&path, &bytes)
    }

    /// The day's consumers document, if any.
    pub fn read_consumers(&self, date: UtcDate) -> Result<Option<serde_json::Value>, StoreError> {
        let path = self.consumers_path(date);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StoreError::Read { path, source }),
        };
        match serde_json::from_slice(&bytes) {
            Ok(v) => Ok(Some(v)),
            Err(e) => {
                self.corrupt_lines_total.fetch_add(1, Ordering::Relaxed);
                log::warn!(
                    "{}: corrupted consumers document, ignored: {e}",
                    path.display()
                );
                Ok(None)
            }
        }
    }

    /// The newest `max_count` snapshots, oldest first. Reads the newest files backward and stops as
    /// soon as it has enough, so the cost does not grow with the history kept.
    pub fn load_recent_snapshots(&self, max_count: usize) -> Result<Vec<HostSnapshot>, StoreError> {
        let mut out = Vec::new();
        if max_count == 0 {
            return Ok(out);
        }
        let mut files = dated_files(&self.dir, SNAPSHOTS)?;
        files.sort_by_key(|f| std::cmp::Reverse(f.0));
        'files: for (_, path) in files {
            let mut lines = BackwardLines::open(&path)?;
            while let Some(line) = lines.next_line()? {
                if let Some(snapshot) = self.decode::<HostSnapshot>(&path, &line) {
                    out.push(snapshot);
                    if out.len() == max_count {
                        break 'files;
                    }
                }
            }
        }
        out.reverse();
        Ok(out)
    }

    /// Every alert of `alerts.jsonl` in its latest state (lines folded by id: a resolution line
    /// replaces the creation line), oldest first. Unresolved ones are the alerts to restore as active.
    pub fn load_alerts(&self) -> Result<Vec<Alert>, StoreError> {
        let path = self.alerts_path();
        let _guard = self
            .alerts_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut latest: HashMap<String, Alert> = HashMap::new();
        for_each_line(&path, |line| {
            if let Some(alert) = self.decode::<Alert>(&path, &line) {
                latest.insert(alert.id.clone(), alert);
            }
        })?;
        let mut alerts: Vec<Alert> = latest.into_values().collect();
        alerts.sort_by(|a, b| a.timestamp.cmp(&b.timestamp).then_with(|| a.id.cmp(&b.id)));
        Ok(alerts)
    }

    /// Applies the retention at `now_ms` (milliseconds since the Unix epoch).
    pub fn prune(&self, now_ms: u64) -> Result<PruneReport, StoreError> {
        let now = i64::try_from(now_ms).unwrap_or(i64::MAX);
        let ms = |d: std::time::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let r = &self.retention;
        let mut report = PruneReport::default();
        for (dir, kind, keep) in [
            (&self.dir, SNAPSHOTS, r.snapshots()),
            (&self.consumers_dir, CONSUMERS, r.consumers()),
            (&self.consumers_dir, OPERATIONS, r.operations()),
        ] {
            let cutoff = now.saturating_sub(ms(keep));
            for (date, path) in dated_files(dir, kind)? {
                if date.end_ms() > cutoff {
                    continue;
                }
                match fs::remove_file(&path) {
                    Ok(()) => report.files_removed.push(path),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(source) => return Err(StoreError::Remove { path, source }),
                }
            }
        }
        report.files_removed.sort();
        report.alert_lines_removed = self.prune_alerts(now.saturating_sub(ms(r.alerts())))?;
        Ok(report)
    }

    /// Rewrites `alerts.jsonl` without the lines of alerts resolved before `cutoff` (and without
    /// corrupted lines). Alerts still active are kept whatever their age, so that they are restored.
    fn prune_alerts(&self, cutoff: i64) -> Result<usize, StoreError> {
        let path = self.alerts_path();
        let _guard = self
            .alerts_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut lines: Vec<(Option<String>, Line)> = Vec::new();
        let mut latest: HashMap<String, (bool, u64)> = HashMap::new();
        for_each_line(&path, |line| {
            let Ok(alert) = serde_json::from_slice::<Alert>(&line.bytes) else {
                lines.push((None, line));
                return;
            };
            let last = alert.resolved_at.unwrap_or(0).max(alert.timestamp);
            latest.insert(alert.id.clone(), (alert.resolved, last));
            lines.push((Some(alert.id), line));
        })?;
        let expired: HashSet<&str> = latest
            .iter()
            .filter(|(_, &(resolved, last))| {
                resolved && i64::try_from(last).unwrap_or(i64::MAX) < cutoff
            })
            .map(|(id, _)| id.as_str())
            .collect();
        let keep = |id: &Option<String>, line: &Line| match id {
            Some(id) => !expired.contains(id.as_str()),
            None => {
                log::warn!(
                    "{}: line {}: corrupted, dropped by retention",
                    path.display(),
                    line.number.unwrap_or(0)
                );
                false
            }
        };
        let mut out = Vec::new();
        let mut removed = 0;
        for (id, line) in &lines {
            if keep(id, line) {
                out.extend_from_slice(&line.bytes);
                out.push(b'\n');
            } else {
                removed += 1;
            }
        }
        if removed > 0 {
            replace_atomically(&path, &out)?;
        }
        Ok(removed)
    }

    fn append_records<T: Serialize>(&self, path: &Path, records: &[T]) -> Result<(), StoreError> {
        let mut buf = Vec::new();
        for record in records {
            serde_json::to_writer(&mut buf, record).map_err(|source| StoreError::Encode {
                path: path.to_path_buf(),
                source,
            })?;
            buf.push(b'\n');
        }
        append(path, buf, self.fsync).map_err(|source| StoreError::Write {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Decodes one line; warns, counts and returns `None` when it is corrupted or partial.
    fn decode<T: DeserializeOwned>(&self, path: &Path, line: &Line) -> Option<T> {
        match serde_json::from_slice(&line.bytes) {
            Ok(v) => Some(v),
            Err(e) => {
                self.corrupt_lines_total.fetch_add(1, Ordering::Relaxed);
                let number = line.number.or_else(|| line_number_at(path, line.offset));
                let at = number.map_or_else(
                    || format!("at byte {}", line.offset),
                    |n| format!("line {n}"),
                );
                if line.terminated {
                    log::warn!("{}: {at}: corrupted line skipped: {e}", path.display());
                } else {
                    log::warn!(
                        "{}: {at}: partial last line (interrupted write) skipped",
                        path.display()
                    );
                }
                None
            }
        }
    }
}

fn dated(dir: &Path, (prefix, suffix): (&str, &str), date: UtcDate) -> PathBuf {
    dir.join(format!("{prefix}{date}{suffix}"))
}

/// The files of `dir` named `<prefix>YYYY-MM-DD<suffix>`.
fn dated_files(
    dir: &Path,
    (prefix, suffix): (&str, &str),
) -> Result<Vec<(UtcDate, PathBuf)>, StoreError> {
    let list_error = |source| StoreError::ListDir {
        path: dir.to_path_buf(),
        source,
    };
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(list_error)? {
        let entry = entry.map_err(list_error)?;
        let name = entry.file_name();
        let Some(date) = name
            .to_str()
            .and_then(|n| n.strip_prefix(prefix))
            .and_then(|n| n.strip_suffix(suffix))
            .and_then(UtcDate::parse)
        else {
            continue;
        };
        out.push((date, entry.path()));
    }
    Ok(out)
}

/// Appends `lines` (whole lines) in one write, first terminating an interrupted last line.
fn append(path: &Path, mut lines: Vec<u8>, fsync: bool) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(path)?;
    let len = file.metadata()?.len();
    if len > 0 {
        let mut last = [0u8];
        file.read_exact_at(&mut last, len - 1)?;
        if last[0] != b'\n' {
            lines.insert(0, b'\n');
        }
    }
    file.write_all(&lines)?;
    file.flush()?;
    if fsync {
        file.sync_data()?;
    }
    Ok(())
}

/// Replaces `path` with `bytes`: writes `<path>.tmp`, syncs it, renames it over `path`, syncs the
/// directory.
fn replace_atomically(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let write_error = |source| StoreError::Write {
        path: path.to_path_buf(),
        source,
    };
    let result = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(write_error)
}

/// One line of a JSONL file, without its `\n`.
struct Line {
    bytes: Vec<u8>,
    /// 1-based line number, when known (forward reads).
    number: Option<usize>,
    /// Byte offset of the line's start.
    offset: u64,
    /// False for a last line without `\n`: an interrupted write.
    terminated: bool,
}

/// Calls `f` for each non-blank line of `path`, in order. A missing file has no lines.
fn for_each_line(path: &Path, mut f: impl FnMut(Line)) -> Result<(), StoreError> {
    let read_error = |source| StoreError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(read_error(source)),
    };
    let mut reader = BufReader::new(file);
    let mut offset = 0;
    let mut number = 0;
    loop {
        let mut bytes = Vec::new();
        let n = reader.read_until(b'\n', &mut bytes).map_err(read_error)?;
        if n == 0 {
            return Ok(());
        }
        number += 1;
        let start = offset;
        offset += n as u64;
        let terminated = bytes.last() == Some(&b'\n');
        if terminated {
            bytes.pop();
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        f(Line {
            bytes,
            number: Some(number),
            offset: start,
            terminated,
        });
    }
}

/// Reads the lines of a file from the last to the first, a chunk at a time.
struct BackwardLines {
    path: PathBuf,
    file: File,
    /// Bytes of the file before `pending` not read yet.
    pos: u64,
    /// Bytes read but not yet returned: from `pos` to the end of the next line to return.
    pending: Vec<u8>,
    /// `pending[..scan_end]` may contain newlines not yet looked at.
    scan_end: usize,
    /// True until the last line of the file has been returned.
    at_end: bool,
}

impl BackwardLines {
    fn open(path: &Path) -> Result<Self, StoreError> {
        let read_error = |source| StoreError::Read {
            path: path.to_path_buf(),
            source,
        };
        let mut file = File::open(path).map_err(read_error)?;
        let pos = file.seek(SeekFrom::End(0)).map_err(read_error)?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            pos,
            pending: Vec::new(),
            scan_end: 0,
            at_end: true,
        })
    }

    /// The previous non-blank line, or `None` at the start of the file.
    fn next_line(&mut self) -> Result<Option<Line>, StoreError> {
        loop {
            if let Some(i) = self.pending[..self.scan_end]
                .iter()
                .rposition(|&b| b == b'\n')
            {
                let bytes = self.pending.split_off(i + 1);
                self.pending.truncate(i);
                self.scan_end = i;
                let terminated = !std::mem::replace(&mut self.at_end, false);
                if let Some(line) = self.line(bytes, self.pos + i as u64 + 1, terminated) {
                    return Ok(Some(line));
                }
                continue;
            }
            if self.pos == 0 {
                let bytes = std::mem::take(&mut self.pending);
                self.scan_end = 0;
                let terminated = !std::mem::replace(&mut self.at_end, false);
                return Ok(self.line(bytes, 0, terminated));
            }
            let start = self.pos.saturating_sub(BACKWARD_CHUNK);
            let len = usize::try_from(self.pos - start).unwrap_or(0);
            let mut chunk = vec![0; len];
            self.file
                .seek(SeekFrom::Start(start))
                .and_then(|_| self.file.read_exact(&mut chunk))
                .map_err(|source| StoreError::Read {
                    path: self.path.clone(),
                    source,
                })?;
            chunk.extend_from_slice(&self.pending);
            self.pending = chunk;
            self.scan_end = len;
            self.pos = start;
        }
    }

    fn line(&self, bytes: Vec<u8>, offset: u64, terminated: bool) -> Option<Line> {
        (!bytes.iter().all(u8::is_ascii_whitespace)).then_some(Line {
            bytes,
            number: None,
            offset,
            terminated,
        })
    }
}

/// The 1-based number of the line starting at `offset` (only computed for warnings).
fn line_number_at(path: &Path, offset: u64) -> Option<usize> {
    let file = File::open(path).ok()?;
    let mut reader = BufReader::new(file.take(offset));
    let mut newlines = 0;
    loop {
        let buf = reader.fill_buf().ok()?;
        if buf.is_empty() {
            return Some(newlines + 1);
        }
        newlines += buf.iter().filter(|&&b| b == b'\n').count();
        let n = buf.len();
        reader.consume(n);
    }
}

impl crate::alerts::AlertSink for Store {
    fn append_alert(&self, alert: &Alert) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        Store::append_alert(self, alert).map_err(Into::into)
    }
}

#[cfg(test)]
mod tests;
