//! One container's log file: the formatter's records written whole, with
//! the file opened again at the same path on request (after the kubelet
//! renamed it).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::format::{CriLogFormatter, DEFAULT_MAX_LINE_SIZE};
use super::{LogError, LogStream};

/// Permissions of a new log file, containerd's: the owner (root) reads and
/// writes, its group reads, others have no access.
const LOG_FILE_MODE: u32 = 0o640;

/// A container's log file and the partial lines of its two streams.
///
/// Each call writes the records it completes with one `write(2)` on a file
/// opened with `O_APPEND`: nothing is held in user space between calls, so a
/// record handed to [`write`](Self::write) is in the file when it returns,
/// and only the unfinished line of each stream lives in memory (see
/// [`finish`](Self::finish)).
#[derive(Debug)]
pub struct ContainerLog {
    path: PathBuf,
    file: File,
    formatter: CriLogFormatter,
    /// Records formatted by the current call, written before it returns.
    records: Vec<u8>,
    /// A failed write left a piece of a record at the end of the file.
    torn: bool,
}

impl ContainerLog {
    /// Opens (creating it if needed, appending if it exists) the log file at
    /// `path`, with containerd's default maximum line size. The directory
    /// must exist. A symbolic link at `path` is refused.
    pub fn open(path: &Path) -> Result<Self, LogError> {
        Self::with_max_line_size(path, DEFAULT_MAX_LINE_SIZE)
    }

    /// [`open`](Self::open) with lines cut after `max_line_size` bytes.
    pub fn with_max_line_size(path: &Path, max_line_size: usize) -> Result<Self, LogError> {
        let file = open_log_file(path)?;
        tracing::debug!(path = %path.display(), "container log opened");
        Ok(Self {
            path: path.to_owned(),
            file,
            formatter: CriLogFormatter::new(max_line_size),
            records: Vec::new(),
            torn: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The formatter, to see what is pending.
    pub fn formatter(&self) -> &CriLogFormatter {
        &self.formatter
    }

    /// Writes the records that `data`, written by the container to `stream`
    /// and received at `now`, completes. On an error those records are lost
    /// (as containerd drops them), the partial lines are kept, and the file
    /// holds no piece of a record.
    pub fn write(
        &mut self,
        stream: LogStream,
        data: &[u8],
        now: SystemTime,
    ) -> Result<(), LogError> {
        self.formatter.push(stream, data, now, &mut self.records);
        self.write_records()
    }

    /// The container's output has ended, or hulld stops reading it: writes
    /// each stream's unfinished line as a `P` record, so that nothing
    /// received is lost. If the output goes on later (hulld reads it again
    /// after a restart), the line continues in the next record, which
    /// readers join to the `P` one.
    pub fn finish(&mut self, now: SystemTime) -> Result<(), LogError> {
        self.formatter.finish(now, &mut self.records);
        self.write_records()
    }

    /// Opens the file at the log's path again, after the kubelet renamed the
    /// old one away. The old file keeps every record written before this
    /// call, the new one gets every later record; the records of a line
    /// still pending go to the new file. On an error, the log goes on
    /// writing to the file it had.
    pub fn reopen(&mut self) -> Result<(), LogError> {
        self.file = open_log_file(&self.path)?;
        self.torn = false;
        tracing::debug!(path = %self.path.display(), "container log reopened");
        Ok(())
    }

    fn write_records(&mut self) -> Result<(), LogError> {
        if self.records.is_empty() {
            return Ok(());
        }
        if self.torn {
            self.records.insert(0, b'\n');
        }
        let result = append_whole(&self.file, &self.records);
        self.records.clear();
        match result {
            Ok(()) => {
                self.torn = false;
                Ok(())
            }
            Err((source, torn)) => {
                // Cut back (or nothing written): the file ends as before.
                self.torn |= torn;
                Err(LogError::Write {
                    path: self.path.clone(),
                    source,
                })
            }
        }
    }
}

/// The file operations [`append_whole`] needs; a trait so that its failure
/// paths can be tested.
trait AppendTarget: Write {
    /// Cuts the last `bytes` bytes off the end.
    fn cut_back(&mut self, bytes: u64) -> io::Result<()>;
}

impl AppendTarget for &File {
    fn cut_back(&mut self, bytes: u64) -> io::Result<()> {
        let len = self.metadata()?.len();
        self.set_len(len.saturating_sub(bytes))
    }
}

/// Appends `records` to `file`. If only some of the bytes could be written
/// (the disk filled up), they are cut off again so that the file does not
/// end in the middle of a record. The error says whether that failed too:
/// then the next write must start with a newline.
fn append_whole(mut file: impl AppendTarget, records: &[u8]) -> Result<(), (io::Error, bool)> {
    let mut written = 0;
    while written < records.len() {
        let error = match file.write(&records[written..]) {
            Ok(0) => io::Error::from(io::ErrorKind::WriteZero),
            Ok(n) => {
                written += n;
                continue;
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => err,
        };
        let torn = written > 0 && file.cut_back(written as u64).is_err();
        return Err((error, torn));
    }
    Ok(())
}

fn open_log_file(path: &Path) -> Result<File, LogError> {
    let open = || -> io::Result<File> {
        // Read access too: to look at the last byte, and so that a FIFO at
        // the path opens at once (and is then refused) instead of blocking.
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(LOG_FILE_MODE)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::other("it is not a regular file"));
        }
        end_torn_record(&file, meta.len())?;
        Ok(file)
    };
    open().map_err(|source| LogError::Open {
        path: path.to_owned(),
        source,
    })
}

/// A file that does not end with a newline was cut in the middle of a
/// record (hulld was killed while writing): ends that line, so the next
/// record is not glued to it.
fn end_torn_record(mut file: &File, len: u64) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    let mut last = [0u8];
    file.read_exact_at(&mut last, len - 1)?;
    if last[0] != b'\n' {
        tracing::warn!("container log ends inside a record; closing that line");
        file.write_all(b"\n")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::pod::logs::testing::{read_records, summary};

    use LogStream::{Stderr, Stdout};

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_795_341_600)
    }

    #[test]
    fn writes_records_and_appends_on_a_second_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut log = ContainerLog::open(&path).unwrap();
        log.write(Stdout, b"first\nsec", now()).unwrap();
        log.write(Stderr, b"oops\n", now()).unwrap();
        assert_eq!(
            summary(&read_records(&path)),
            ["stdout F first", "stderr F oops"]
        );
        log.finish(now()).unwrap();
        drop(log);

        // A restarted hulld opens the same file again: nothing is truncated.
        let mut log = ContainerLog::open(&path).unwrap();
        log.write(Stdout, b"ond\n", now()).unwrap();
        assert_eq!(
            summary(&read_records(&path)),
            [
                "stdout F first",
                "stderr F oops",
                "stdout P sec",
                "stdout F ond"
            ]
        );
    }

    #[test]
    fn a_new_file_is_readable_by_owner_and_group_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        ContainerLog::open(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & !LOG_FILE_MODE, 0, "mode {mode:o}");
        assert_eq!(mode & 0o600, 0o600, "mode {mode:o}");
    }

    #[test]
    fn open_errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-dir").join("0.log");
        let err = ContainerLog::open(&missing).unwrap_err();
        assert!(
            matches!(&err, LogError::Open { source, .. } if source.kind() == io::ErrorKind::NotFound)
        );
        assert_eq!(err.path(), missing);
        assert!(
            err.to_string().contains(&missing.display().to_string()),
            "{err}"
        );
        assert!(
            !missing.parent().unwrap().exists(),
            "the directory is not created"
        );

        // A directory, and a symbolic link, at the path are refused.
        let err = ContainerLog::open(dir.path()).unwrap_err();
        assert!(matches!(err, LogError::Open { .. }), "{err}");
        let target = dir.path().join("elsewhere");
        let link = dir.path().join("link.log");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = ContainerLog::open(&link).unwrap_err();
        assert!(err.to_string().contains("link.log"), "{err}");
        assert!(!target.exists(), "nothing is written through the link");
    }

    #[test]
    fn a_torn_last_record_is_closed_before_appending() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        std::fs::write(
            &path,
            "2026-11-22T10:00:00Z stdout F whole\n2026-11-22T10:00:00Z stdout F cut sho",
        )
        .unwrap();
        let mut log = ContainerLog::open(&path).unwrap();
        log.write(Stdout, b"after restart\n", now()).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(lines[1], "2026-11-22T10:00:00Z stdout F cut sho");
        assert_eq!(lines[2], "2026-11-22T10:00:00Z stdout F after restart");
    }

    #[test]
    fn reopen_after_rename_splits_records_between_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let rotated = dir.path().join("0.log.20261122-100000");
        let mut log = ContainerLog::open(&path).unwrap();
        log.write(Stdout, b"before 1\nbefore 2\nhalf ", now())
            .unwrap();
        std::fs::rename(&path, &rotated).unwrap();
        log.write(Stderr, b"between rename and reopen\n", now())
            .unwrap();
        log.reopen().unwrap();
        log.write(Stdout, b"a line\nafter\n", now()).unwrap();

        assert_eq!(
            summary(&read_records(&rotated)),
            [
                "stdout F before 1",
                "stdout F before 2",
                "stderr F between rename and reopen"
            ]
        );
        assert_eq!(
            summary(&read_records(&path)),
            ["stdout F half a line", "stdout F after"]
        );
    }

    #[test]
    fn a_failed_reopen_names_the_path_and_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let container_dir = dir.path().join("app");
        std::fs::create_dir(&container_dir).unwrap();
        let path = container_dir.join("0.log");
        let moved = dir.path().join("0.log.old");
        let mut log = ContainerLog::open(&path).unwrap();
        log.write(Stdout, b"one\n", now()).unwrap();
        std::fs::rename(&path, &moved).unwrap();
        std::fs::remove_dir(&container_dir).unwrap();

        let err = log.reopen().unwrap_err();
        assert!(
            matches!(&err, LogError::Open { source, .. } if source.kind() == io::ErrorKind::NotFound)
        );
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        assert!(!container_dir.exists());

        log.write(Stdout, b"two\n", now()).unwrap();
        assert_eq!(
            summary(&read_records(&moved)),
            ["stdout F one", "stdout F two"]
        );
    }

    #[test]
    fn finish_writes_pending_lines_of_both_streams_as_partial() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut log = ContainerLog::with_max_line_size(&path, 4).unwrap();
        log.write(Stderr, b"err", now()).unwrap();
        log.write(Stdout, b"0123456", now()).unwrap();
        assert_eq!(log.formatter().pending(Stdout), b"456");
        log.finish(now()).unwrap();
        assert_eq!(
            summary(&read_records(&path)),
            ["stdout P 0123", "stdout P 456", "stderr P err"]
        );
        assert!(log.formatter().pending(Stdout).is_empty());
    }

    /// A file that takes `room` bytes, then fails with ENOSPC.
    struct FullDisk {
        data: Vec<u8>,
        room: usize,
        cut_back_fails: bool,
    }

    impl Write for FullDisk {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = buf.len().min(self.room - self.data.len());
            if n == 0 {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            self.data.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl AppendTarget for &mut FullDisk {
        fn cut_back(&mut self, bytes: u64) -> io::Result<()> {
            if self.cut_back_fails {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            let len = self.data.len() - bytes as usize;
            self.data.truncate(len);
            Ok(())
        }
    }

    #[test]
    fn a_partial_write_is_cut_back_to_whole_records() {
        let before = b"2026-11-22T10:00:00Z stdout F kept\n";
        let records = b"2026-11-22T10:00:00Z stdout F a\n2026-11-22T10:00:00Z stdout F b\n";
        let mut disk = FullDisk {
            data: before.to_vec(),
            room: before.len() + 40,
            cut_back_fails: false,
        };
        let (err, torn) = append_whole(&mut disk, records).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
        assert!(!torn);
        assert_eq!(disk.data, before);

        disk.cut_back_fails = true;
        let (_, torn) = append_whole(&mut disk, records).unwrap_err();
        assert!(torn, "a piece of a record is left and reported");

        // Nothing written at all: nothing to cut, not torn.
        let mut disk = FullDisk {
            data: Vec::new(),
            room: 0,
            cut_back_fails: true,
        };
        let (_, torn) = append_whole(&mut disk, records).unwrap_err();
        assert!(!torn);
        assert!(disk.data.is_empty());
    }

    #[test]
    fn a_torn_file_stays_torn_until_a_write_succeeds() {
        // /dev/full fails every write: the newline owed to a torn file is
        // not written either, so it is still owed afterwards.
        let path = Path::new("/dev/full");
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .expect("/dev/full is needed for this test");
        let mut log = ContainerLog {
            path: path.to_owned(),
            file,
            formatter: CriLogFormatter::new(100),
            records: Vec::new(),
            torn: true,
        };
        log.write(Stdout, b"x\n", now()).unwrap_err();
        assert!(log.torn);
    }

    #[test]
    fn a_write_error_is_reported_with_the_path_and_the_log_goes_on() {
        // /dev/full: every write fails with ENOSPC, as on a full disk.
        let path = Path::new("/dev/full");
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .expect("/dev/full is needed for this test");
        let mut log = ContainerLog {
            path: path.to_owned(),
            file,
            formatter: CriLogFormatter::new(100),
            records: Vec::new(),
            torn: false,
        };
        let err = log.write(Stdout, b"lost\npending", now()).unwrap_err();
        assert!(
            matches!(&err, LogError::Write { source, .. } if source.raw_os_error() == Some(libc::ENOSPC))
        );
        assert!(err.to_string().contains("/dev/full"), "{err}");
        assert_eq!(
            log.formatter().pending(Stdout),
            b"pending",
            "partial lines survive"
        );
        assert!(!log.torn);
    }

    #[test]
    fn after_a_torn_write_the_next_records_start_a_new_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut log = ContainerLog::open(&path).unwrap();
        log.write(Stdout, b"whole\n", now()).unwrap();
        // What a write that failed half way and could not be cut back leaves.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"2026-11-22T10:00:00Z std")
            .unwrap();
        log.torn = true;
        log.write(Stdout, b"next\n", now()).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(lines[1], "2026-11-22T10:00:00Z std");
        assert_eq!(lines[2], "2026-11-22T10:00:00Z stdout F next");
        assert!(!log.torn);
    }
}
