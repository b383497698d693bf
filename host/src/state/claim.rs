//! Which state directory a host uses. One host per application holds a state
//! directory at a time (a lock file, released when the process ends, however it
//! ends); a second host of the application on the same machine with the same
//! configuration takes the next free one (`<dir>-2`, `<dir>-3`, …), so several
//! hosts on one machine work without configuring each. A host restarted takes
//! the first free directory again: its own (and so its identity, which follows
//! from the directory's path).

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

use super::StoreError;

/// How many directories are tried before giving up.
const MAX_SLOTS: usize = 32;

/// A state directory held by this process until dropped.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

/// Takes `dir` for `application`, or the first free `<dir>-N`. Returns the
/// directory taken and its lock.
pub fn claim(dir: &Path, application: &str) -> Result<(PathBuf, DirLock), StoreError> {
    let io = |path: &Path, source| StoreError::Io { path: path.display().to_string(), source };
    for slot in 1..=MAX_SLOTS {
        let candidate = if slot == 1 {
            dir.to_path_buf()
        } else {
            let mut name = dir.as_os_str().to_owned();
            name.push(format!("-{slot}"));
            PathBuf::from(name)
        };
        let app = candidate.join(application);
        std::fs::create_dir_all(&app).map_err(|e| io(&app, e))?;
        let path = app.join(".lock");
        let file = OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(|e| io(&path, e))?;
        match file.try_lock() {
            Ok(()) => return Ok((candidate, DirLock { _file: file })),
            Err(TryLockError::WouldBlock) => continue,
            Err(TryLockError::Error(e)) => return Err(io(&path, e)),
        }
    }
    Err(io(
        dir,
        std::io::Error::other(format!(
            "{MAX_SLOTS} hosts of {application:?} already hold {0} and {0}-2 … {0}-{MAX_SLOTS} on this machine",
            dir.display()
        )),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_host_takes_the_next_directory_and_a_restarted_one_its_own_again() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("state");
        let (first, lock1) = claim(&dir, "app").unwrap();
        assert_eq!(first, dir);
        let (second, lock2) = claim(&dir, "app").unwrap();
        assert_eq!(second, root.path().join("state-2"));
        // Another application has the first directory to itself.
        let (other, _lock) = claim(&dir, "other").unwrap();
        assert_eq!(other, dir);
        drop(lock1);
        assert_eq!(claim(&dir, "app").unwrap().0, dir);
        drop(lock2);
    }
}
