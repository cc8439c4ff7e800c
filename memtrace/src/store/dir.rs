//! The data directory as an open directory descriptor: every file is opened relative to it, one
//! path component at a time, never through a symbolic link.
//!
//! - The directory is created with mode 0700 and checked once opened: one owned by another user or
//!   writable by every user is refused (either lets someone else plant links or replace files that
//!   the agent, often root, then writes); one writable by its group is used with a warning.
//! - Files are opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`
//!   where the kernel has it (5.6+), else `openat(O_NOFOLLOW)`; the names are single components, so
//!   both refuse exactly the same thing: a name that is a symbolic link (`ELOOP`).
//! - Opens never block (`O_NONBLOCK`: a FIFO planted under a data file's name does not hang the
//!   agent) and `fstat` must say a regular file; a file written to must have one link only (a hard
//!   link to a file elsewhere is refused).
//! - Replacements write `<name>.tmp` created with `O_EXCL` (a stale `.tmp`, even a symbolic link, is
//!   removed first, never followed), sync it, rename it over the name and sync the directory.

use std::{
    ffi::{CStr, CString, OsStr},
    fs::File,
    io::{self, Write},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::{ffi::OsStrExt, fs::DirBuilderExt},
    },
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
};

use super::StoreError;

/// Mode of the directories and files the store creates.
const DIR_MODE: libc::mode_t = 0o700;
const FILE_MODE: libc::mode_t = 0o600;

/// What a directory entry is, without following it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum EntryKind {
    File,
    Other,
}

/// An open directory of the data directory tree.
#[derive(Debug)]
pub(super) struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

/// Whether `openat2` is worth trying (cleared the first time the kernel does not know it).
static OPENAT2: AtomicBool = AtomicBool::new(true);

impl Dir {
    /// Opens (creating it with mode 0700 if needed, parents included) the data directory itself. The
    /// configured path may go through symbolic links (the operator's choice); everything below it
    /// may not.
    pub(super) fn open_root(path: &Path) -> Result<Self, StoreError> {
        let create_error = |source| StoreError::CreateDir {
            path: path.to_path_buf(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(path)
            .map_err(create_error)?;
        let c_path = cstring(path.as_os_str()).map_err(create_error)?;
        // SAFETY: a valid NUL-terminated path; the returned descriptor is owned below.
        let fd = unsafe {
            libc::open(
                c_path.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(create_error(io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just opened and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let dir = Self {
            fd,
            path: path.to_path_buf(),
        };
        dir.check_safe()?;
        Ok(dir)
    }

    /// Opens (creating it with mode 0700 if needed) the subdirectory `name`, which must not be a
    /// symbolic link.
    pub(super) fn open_subdir(&self, name: &str) -> Result<Self, StoreError> {
        let path = self.path.join(name);
        let create_error = |source| StoreError::CreateDir {
            path: path.clone(),
            source,
        };
        let c_name = cstring(OsStr::new(name)).map_err(create_error)?;
        // SAFETY: a valid descriptor and NUL-terminated name.
        if unsafe { libc::mkdirat(self.fd.as_raw_fd(), c_name.as_ptr(), DIR_MODE) } != 0 {
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::AlreadyExists {
                return Err(create_error(err));
            }
        }
        let fd = self
            .openat(&c_name, libc::O_RDONLY | libc::O_DIRECTORY, 0)
            .map_err(|source| {
                // O_DIRECTORY | O_NOFOLLOW on a symbolic link says ENOTDIR (openat) or ELOOP (openat2).
                if self
                    .lstat(&c_name)
                    .is_some_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFLNK)
                {
                    StoreError::Symlink { path: path.clone() }
                } else {
                    create_error(source)
                }
            })?;
        let dir = Self { fd, path };
        dir.check_safe()?;
        Ok(dir)
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Refuses a directory owned by another user or writable by every user; warns about one writable
    /// by its group.
    fn check_safe(&self) -> Result<(), StoreError> {
        let st = fstat(&self.fd).map_err(|source| StoreError::CreateDir {
            path: self.path.clone(),
            source,
        })?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let uid = unsafe { libc::geteuid() };
        let mode = st.st_mode & 0o7777;
        if st.st_uid != uid {
            return Err(StoreError::ForeignOwner {
                path: self.path.clone(),
                owner: st.st_uid,
                uid,
            });
        }
        if mode & libc::S_IWOTH != 0 {
            return Err(StoreError::WorldWritable {
                path: self.path.clone(),
                mode,
            });
        }
        if mode & libc::S_IWGRP != 0 {
            log::warn!(
                "data directory {} is writable by its group (gid {}, mode {mode:04o}): members of that group \
                 can replace the agent's files; chmod g-w it (0700 is enough)",
                self.path.display(),
                st.st_gid
            );
        }
        Ok(())
    }

    /// Opens `name` for reading. `None` when there is no such file; an error when it is a symbolic
    /// link or not a regular file.
    pub(super) fn open_read(&self, name: &str) -> Result<Option<File>, StoreError> {
        let path = self.path.join(name);
        let read_error = |source| StoreError::Read {
            path: path.clone(),
            source,
        };
        let c_name = cstring(OsStr::new(name)).map_err(read_error)?;
        let fd = match self.openat(&c_name, libc::O_RDONLY, 0) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(link_or(e, &path, read_error)),
        };
        let st = fstat(&fd).map_err(read_error)?;
        if !is_regular(&st) {
            return Err(StoreError::NotRegular { path });
        }
        Ok(Some(File::from(fd)))
    }

    /// Opens `name` for appending (and reading its last byte), creating it with mode 0600.
    pub(super) fn open_append(&self, name: &str) -> Result<File, StoreError> {
        let path = self.path.join(name);
        let write_error = |source| StoreError::Write {
            path: path.clone(),
            source,
        };
        let c_name = cstring(OsStr::new(name)).map_err(write_error)?;
        let fd = self
            .openat(
                &c_name,
                libc::O_RDWR | libc::O_APPEND | libc::O_CREAT,
                FILE_MODE,
            )
            .map_err(|e| link_or(e, &path, write_error))?;
        self.check_writable(&fd, &path)?;
        Ok(File::from(fd))
    }

    fn check_writable(&self, fd: &OwnedFd, path: &Path) -> Result<(), StoreError> {
        let st = fstat(fd).map_err(|source| StoreError::Write {
            path: path.to_path_buf(),
            source,
        })?;
        if !is_regular(&st) {
            return Err(StoreError::NotRegular {
                path: path.to_path_buf(),
            });
        }
        if st.st_nlink > 1 {
            return Err(StoreError::HardLinked {
                path: path.to_path_buf(),
                links: st.st_nlink,
            });
        }
        Ok(())
    }

    /// Replaces `name` with what `write` writes: `<name>.tmp` is created (exclusively, mode 0600),
    /// written, synced and renamed over `name`; then the directory is synced. On failure the
    /// temporary file is removed and `name` is untouched.
    pub(super) fn replace_with(
        &self,
        name: &str,
        write: impl FnOnce(&mut File) -> io::Result<()>,
    ) -> Result<(), StoreError> {
        let path = self.path.join(name);
        let tmp_name = format!("{name}.tmp");
        let write_error = |source| StoreError::Write {
            path: path.clone(),
            source,
        };
        let c_name = cstring(OsStr::new(name)).map_err(write_error)?;
        let c_tmp = cstring(OsStr::new(&tmp_name)).map_err(write_error)?;
        let create = || {
            self.openat(
                &c_tmp,
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
                FILE_MODE,
            )
        };
        let fd = match create() {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                // A leftover of an interrupted replacement, or something planted there: removed (a
                // symbolic link is removed itself, not what it points to), never written through.
                log::warn!(
                    "{}: removing a stale {tmp_name} before replacing the file",
                    self.path.display()
                );
                self.unlink_c(&c_tmp).map_err(write_error)?;
                create().map_err(|e| link_or(e, &path, write_error))?
            }
            Err(e) => return Err(link_or(e, &path, write_error)),
        };
        let mut file = File::from(fd);
        let result = (|| {
            write(&mut file)?;
            file.flush()?;
            file.sync_all()?;
            // SAFETY: valid descriptors and NUL-terminated names; both names are in this directory.
            let ret = unsafe {
                libc::renameat(
                    self.fd.as_raw_fd(),
                    c_tmp.as_ptr(),
                    self.fd.as_raw_fd(),
                    c_name.as_ptr(),
                )
            };
            if ret != 0 {
                return Err(io::Error::last_os_error());
            }
            self.sync()
        })();
        if result.is_err() {
            let _ = self.unlink_c(&c_tmp);
        }
        result.map_err(write_error)
    }

    /// Removes the regular file `name` (a directory is never removed: `unlinkat` without
    /// `AT_REMOVEDIR` refuses it).
    pub(super) fn unlink(&self, name: &str) -> io::Result<()> {
        self.unlink_c(&cstring(OsStr::new(name))?)
    }

    fn unlink_c(&self, name: &CStr) -> io::Result<()> {
        // SAFETY: a valid descriptor and NUL-terminated name.
        if unsafe { libc::unlinkat(self.fd.as_raw_fd(), name.as_ptr(), 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Syncs the directory itself (after a rename).
    fn sync(&self) -> io::Result<()> {
        // SAFETY: a valid descriptor.
        if unsafe { libc::fsync(self.fd.as_raw_fd()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The names in the directory (not `.` and `..`), each with its kind, links not followed.
    pub(super) fn list(&self) -> Result<Vec<(String, EntryKind)>, StoreError> {
        let list_error = |source| StoreError::ListDir {
            path: self.path.clone(),
            source,
        };
        // A descriptor of its own for the directory stream (closedir closes it).
        let fd = self
            .openat(c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)
            .map_err(list_error)?;
        let raw = std::os::fd::IntoRawFd::into_raw_fd(fd);
        // SAFETY: `raw` is an open directory descriptor whose ownership passes to the stream.
        let stream = unsafe { libc::fdopendir(raw) };
        if stream.is_null() {
            let err = io::Error::last_os_error();
            // SAFETY: fdopendir failed, so `raw` is still ours to close.
            unsafe { libc::close(raw) };
            return Err(list_error(err));
        }
        let mut out = Vec::new();
        let result = loop {
            // SAFETY: errno is thread-local; clearing it tells the end of the stream from an error.
            unsafe { *libc::__errno_location() = 0 };
            // SAFETY: `stream` is a valid, open directory stream.
            let entry = unsafe { libc::readdir64(stream) };
            if entry.is_null() {
                let err = io::Error::last_os_error();
                break if err.raw_os_error() == Some(0) {
                    Ok(())
                } else {
                    Err(err)
                };
            }
            // SAFETY: readdir returned a valid entry whose name is NUL-terminated; it stays valid
            // until the next readdir on this stream, and is copied before that.
            let (name, d_type) = unsafe {
                (
                    CStr::from_ptr((*entry).d_name.as_ptr()).to_bytes().to_vec(),
                    (*entry).d_type,
                )
            };
            if name == b"." || name == b".." {
                continue;
            }
            let Ok(name) = String::from_utf8(name) else {
                continue;
            };
            let kind = match d_type {
                libc::DT_REG => EntryKind::File,
                libc::DT_UNKNOWN => self.kind_of(&name),
                _ => EntryKind::Other,
            };
            out.push((name, kind));
        };
        // SAFETY: `stream` is open and closed once (which closes `raw`).
        unsafe { libc::closedir(stream) };
        result.map_err(list_error)?;
        Ok(out)
    }

    /// The kind of `name` by `fstatat` without following links (file systems without `d_type`).
    fn kind_of(&self, name: &str) -> EntryKind {
        let st = cstring(OsStr::new(name))
            .ok()
            .and_then(|c_name| self.lstat(&c_name));
        if st.is_some_and(|st| is_regular(&st)) {
            EntryKind::File
        } else {
            EntryKind::Other
        }
    }

    /// `fstatat` of `name` without following a symbolic link.
    fn lstat(&self, name: &CStr) -> Option<libc::stat> {
        // SAFETY: all-zero is a valid `stat`.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: a valid descriptor, NUL-terminated name and out-pointer.
        let ret = unsafe {
            libc::fstatat(
                self.fd.as_raw_fd(),
                name.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        (ret == 0).then_some(st)
    }

    /// Opens a single-component `name` relative to this directory without following a symbolic link
    /// and without blocking.
    fn openat(&self, name: &CStr, flags: libc::c_int, mode: libc::mode_t) -> io::Result<OwnedFd> {
        let flags = flags | libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_NONBLOCK;
        if OPENAT2.load(Ordering::Relaxed) {
            match self.openat2(name, flags, mode) {
                // No openat2 here (kernel < 5.6): openat from now on.
                Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                    OPENAT2.store(false, Ordering::Relaxed);
                }
                // A seccomp filter may refuse openat2 with EPERM: openat says whether it is that.
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => {}
                other => return other,
            }
        }
        // SAFETY: a valid descriptor and NUL-terminated name; the result is owned below.
        let fd = unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                name.as_ptr(),
                flags,
                libc::c_uint::from(mode),
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and is owned by nothing else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    fn openat2(&self, name: &CStr, flags: libc::c_int, mode: libc::mode_t) -> io::Result<OwnedFd> {
        // SAFETY: all-zero is a valid `open_how` (no flags, no mode, no resolve restrictions).
        let mut how: libc::open_how = unsafe { std::mem::zeroed() };
        how.flags = u64::try_from(flags).unwrap_or(0);
        how.mode = if flags & libc::O_CREAT != 0 {
            u64::from(mode)
        } else {
            0
        };
        how.resolve =
            libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
        // SAFETY: a valid descriptor, NUL-terminated name, and `how` with its exact size.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                self.fd.as_raw_fd(),
                name.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd =
            libc::c_int::try_from(ret).map_err(|_| io::Error::other("descriptor out of range"))?;
        // SAFETY: `fd` was just opened and is owned by nothing else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

fn cstring(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn fstat(fd: &OwnedFd) -> io::Result<libc::stat> {
    // SAFETY: all-zero is a valid `stat`.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor and out-pointer.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

fn is_regular(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFREG
}

/// `ELOOP` (the name is a symbolic link) as its own error; anything else through `other`.
fn link_or(err: io::Error, path: &Path, other: impl FnOnce(io::Error) -> StoreError) -> StoreError {
    if err.raw_os_error() == Some(libc::ELOOP) {
        StoreError::Symlink {
            path: path.to_path_buf(),
        }
    } else {
        other(err)
    }
}
