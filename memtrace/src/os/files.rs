//! Opening files that another process controls: its executable, its libraries, its perf map. Such
//! a path may have been replaced by a FIFO (whose `open` blocks forever), a device, or a symlink to
//! somewhere else. [`open_regular`] never blocks on open and accepts only a regular file;
//! [`read_regular`] also bounds the size read.

use std::{
    fs::File,
    io::{self, Read as _},
    os::unix::fs::OpenOptionsExt as _,
    path::Path,
};

/// Whether `path` is one of the kernel's links to what a process mapped or runs
/// (`/proc/PID/exe`, `/proc/PID/map_files/...`): those are followed, as they lead to the very file
/// the process uses, never to a path it could swap.
fn is_kernel_link(path: &Path) -> bool {
    let mut parts = path.components().map(|c| c.as_os_str().to_string_lossy());
    let (Some(root), Some(proc), Some(pid), Some(what)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    root == "/"
        && proc == "proc"
        && (pid.parse::<u32>().is_ok() || pid == "self")
        && (what == "exe" || what == "map_files")
}

/// Opens `path` for reading without blocking (`O_NONBLOCK`: a FIFO opens at once and is then
/// refused) and without following a final symlink (except the kernel's own `/proc/PID/exe` and
/// `map_files` links); anything but a regular file is refused with `InvalidInput`.
pub fn open_regular(path: &Path) -> io::Result<File> {
    let mut flags = libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC;
    if !is_kernel_link(path) {
        flags |= libc::O_NOFOLLOW;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", path.display()),
        ));
    }
    Ok(file)
}

/// The contents of a regular file (see [`open_regular`]) of at most `max_bytes`; a larger file is
/// refused with `InvalidData`.
pub fn read_regular(path: &Path, max_bytes: u64) -> io::Result<Vec<u8>> {
    let file = open_regular(path)?;
    let len = file.metadata()?.len();
    if len > max_bytes {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} is {len} bytes, more than the {max_bytes} read at most",
                path.display()
            ),
        ));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.take(max_bytes).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// A path that reopens an already opened file (`/proc/self/fd/N`): for libraries that open files by
/// path themselves (blazesym). Reopening goes to the same inode, whatever the original path
/// now names. Valid while `file` is open.
pub fn reopen_path(file: &File) -> std::path::PathBuf {
    use std::os::fd::AsRawFd as _;
    std::path::PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("memtrace-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir.join(name)
    }

    #[test]
    fn regular_files_are_read_others_refused_at_once() {
        let file = temp("regular");
        std::fs::write(&file, b"ELF").unwrap();
        assert_eq!(read_regular(&file, 16).unwrap(), b"ELF");
        assert_eq!(
            read_regular(&file, 2).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );

        // A FIFO nobody writes to: opening it must not block, and it is refused.
        let fifo = temp("fifo");
        let _ = std::fs::remove_file(&fifo);
        let c = std::ffi::CString::new(fifo.to_string_lossy().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let started = std::time::Instant::now();
        assert_eq!(
            open_regular(&fifo).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(5));

        // A symlink in the last component is not followed...
        let link = temp("link");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert!(open_regular(&link).is_err());
        // ... but the kernel's links to what a process runs are.
        assert!(open_regular(Path::new("/proc/self/exe")).is_ok());
        assert!(open_regular(Path::new("/dev/null")).is_err());
        assert!(open_regular(Path::new("/")).is_err());

        let opened = open_regular(&file).unwrap();
        assert_eq!(std::fs::read(reopen_path(&opened)).unwrap(), b"ELF");
        let _ = std::fs::remove_dir_all(file.parent().unwrap());
    }
}
