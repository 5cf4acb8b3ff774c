//! A drive's backing file.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::SECTOR_SIZE;

/// Why a backing file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BackingError {
    #[error("cannot open backing file {path}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot find the size of backing file {path}")]
    Size {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// An open backing file and its size in sectors.
#[derive(Debug)]
pub struct Disk {
    pub file: File,
    pub path: PathBuf,
    pub sectors: u64,
}

impl Disk {
    /// Opens `path` read-only or read-write. The size is the file's length
    /// (or a block device's) rounded down to whole sectors.
    pub fn open(path: &Path, read_only: bool) -> Result<Self, BackingError> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| BackingError::Open {
                path: path.display().to_string(),
                source,
            })?;
        let bytes = file
            .seek(SeekFrom::End(0))
            .map_err(|source| BackingError::Size {
                path: path.display().to_string(),
                source,
            })?;
        if bytes % SECTOR_SIZE != 0 {
            tracing::warn!(
                path = %path.display(),
                bytes,
                "backing file is not a whole number of sectors; the tail is not visible"
            );
        }
        Ok(Self {
            file,
            path: path.to_path_buf(),
            sectors: bytes / SECTOR_SIZE,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_is_whole_sectors() {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(3 * SECTOR_SIZE + 100).unwrap();
        let d = Disk::open(f.path(), true).unwrap();
        assert_eq!(d.sectors, 3);
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = Disk::open(Path::new("/nonexistent/disk.img"), true).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/disk.img"));
    }

    #[test]
    fn read_only_open_refuses_writes() {
        use std::io::Write;
        let f = tempfile::NamedTempFile::new().unwrap();
        let mut d = Disk::open(f.path(), true).unwrap();
        assert!(d.file.write_all(b"x").is_err());
    }
}
