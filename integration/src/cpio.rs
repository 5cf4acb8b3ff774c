//! A writer for the "newc" cpio format, the format the Linux kernel unpacks as
//! an initramfs (`Documentation/driver-api/early-userspace/buffer-format.rst`).
//!
//! Entries are written in the order given; a parent folder must come before
//! what it holds. Owner is root, mtime 0, so the same inputs give the same
//! bytes.

use std::path::Path;

/// Errors building an archive.
#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    /// A name that the format cannot carry or the kernel would misplace.
    #[error("cpio entry name {0:?} must be relative, non-empty and without NUL")]
    BadName(String),
    /// An entry too large for the format's 32-bit size field.
    #[error("cpio entry {name:?} is {size} bytes, over the format's 4 GiB limit")]
    TooLarge { name: String, size: usize },
    /// Reading a file to add, or writing the archive, failed.
    #[error("cannot read or write {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// An archive being built in memory.
#[derive(Debug, Default)]
pub struct CpioArchive {
    bytes: Vec<u8>,
    next_inode: u32,
}

impl CpioArchive {
    pub fn new() -> CpioArchive {
        CpioArchive {
            bytes: Vec::new(),
            next_inode: 1,
        }
    }

    /// A folder with permission bits `mode` (e.g. 0o755).
    pub fn dir(&mut self, name: &str, mode: u32) -> Result<&mut Self, CpioError> {
        self.entry(name, S_IFDIR | (mode & 0o7777), 2, 0, &[])?;
        Ok(self)
    }

    /// A regular file with `data` and permission bits `mode`.
    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> Result<&mut Self, CpioError> {
        self.entry(name, S_IFREG | (mode & 0o7777), 1, 0, data)?;
        Ok(self)
    }

    /// A regular file copied from the host file `source`.
    pub fn file_from(
        &mut self,
        name: &str,
        mode: u32,
        source: &Path,
    ) -> Result<&mut Self, CpioError> {
        let data = std::fs::read(source).map_err(|source_err| CpioError::Io {
            path: source.display().to_string(),
            source: source_err,
        })?;
        self.file(name, mode, &data)
    }

    /// A symbolic link `name` → `target`.
    pub fn symlink(&mut self, name: &str, target: &str) -> Result<&mut Self, CpioError> {
        self.entry(name, S_IFLNK | 0o777, 1, 0, target.as_bytes())?;
        Ok(self)
    }

    /// A character device node (e.g. `dev/console`, 5:1), so the kernel has a
    /// console for init before devtmpfs is mounted.
    pub fn char_device(
        &mut self,
        name: &str,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> Result<&mut Self, CpioError> {
        let rdev = (major << 8) | minor;
        self.entry(name, S_IFCHR | (mode & 0o7777), 1, rdev, &[])?;
        Ok(self)
    }

    /// Ends the archive and returns its bytes.
    pub fn finish(mut self) -> Vec<u8> {
        // The trailer is an entry like any other; its name cannot be refused.
        self.raw_entry("TRAILER!!!", 0, 1, 0, 0, &[]);
        self.bytes
    }

    /// Ends the archive and writes it to `path`.
    pub fn write_to(self, path: &Path) -> Result<(), CpioError> {
        std::fs::write(path, self.finish()).map_err(|source| CpioError::Io {
            path: path.display().to_string(),
            source,
        })
    }

    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        rdev: u32,
        data: &[u8],
    ) -> Result<(), CpioError> {
        if name.is_empty() || name.starts_with('/') || name.contains('\0') {
            return Err(CpioError::BadName(name.to_string()));
        }
        if u32::try_from(data.len()).is_err() {
            return Err(CpioError::TooLarge {
                name: name.to_string(),
                size: data.len(),
            });
        }
        let inode = self.next_inode;
        self.next_inode += 1;
        self.raw_entry(name, mode, nlink, rdev, inode, data);
        Ok(())
    }

    fn raw_entry(&mut self, name: &str, mode: u32, nlink: u32, rdev: u32, inode: u32, data: &[u8]) {
        let name_size = name.len() + 1;
        let fields = [
            inode,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            data.len() as u32,
            0, // dev major
            0, // dev minor
            rdev >> 8,
            rdev & 0xff,
            name_size as u32,
            0, // check
        ];
        self.bytes.extend_from_slice(b"070701");
        for field in fields {
            self.bytes
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    #[test]
    fn layout_of_one_file() {
        let mut archive = CpioArchive::new();
        archive.file("a", 0o644, b"xyz").unwrap();
        let bytes = archive.finish();
        // 110-byte header + "a\0" padded to 112, then 3 data bytes padded to 4.
        assert_eq!(&bytes[..6], b"070701");
        assert_eq!(&bytes[6 + 8..6 + 16], b"000081a4");
        assert_eq!(&bytes[110..112], b"a\0");
        assert_eq!(&bytes[112..115], b"xyz");
        assert_eq!(bytes.len() % 4, 0);
        assert!(bytes.windows(10).any(|w| w == b"TRAILER!!!"));
    }

    #[test]
    fn names_are_checked() {
        let mut archive = CpioArchive::new();
        assert!(archive.file("/abs", 0o644, b"").is_err());
        assert!(archive.dir("", 0o755).is_err());
    }

    /// GNU cpio, when installed, must list what was written.
    #[test]
    fn gnu_cpio_reads_it_back() {
        let mut archive = CpioArchive::new();
        archive
            .dir("bin", 0o755)
            .unwrap()
            .file("bin/tool", 0o755, b"#!/bin/sh\n")
            .unwrap()
            .symlink("init", "bin/tool")
            .unwrap()
            .char_device("console", 0o600, 5, 1)
            .unwrap();
        let bytes = archive.finish();
        let mut child = match Command::new("cpio")
            .args(["-t", "-v", "--quiet"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
        {
            Ok(child) => child,
            Err(err) => panic!("this test needs GNU cpio (Debian package cpio): {err}"),
        };
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&bytes).unwrap();
        let out = child.wait_with_output().unwrap();
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{listing}");
        assert!(listing.contains("drwxr-xr-x"), "{listing}");
        assert!(listing.contains("bin/tool"), "{listing}");
        assert!(listing.contains("init -> bin/tool"), "{listing}");
        assert!(listing.contains("crw-------"), "{listing}");
    }
}
