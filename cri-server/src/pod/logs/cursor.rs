//! How far a container's output has reached its log file, per stream, kept
//! in a 16-byte file of the pod's state (two little-endian u64: stdout,
//! stderr) so that a hulld started after a crash asks the agent for exactly
//! the output that is not in the file yet.
//!
//! The agent numbers each stream's bytes from 0 and holds what it sent until
//! hulld acknowledges it (agent protocol 4). After each write to the log the
//! pump records the offsets of what is in the file — bytes of an unfinished
//! line, held in memory, are not — and only then acknowledges them. A crash
//! between the two makes the agent send again what the file already has
//! (acknowledged later than recorded, never the other way round), and the
//! record is one `pwrite` of 16 bytes after the log's `write`: the window in
//! which a crash repeats a chunk is a single system call wide, and no crash
//! loses output.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use tokio::sync::watch;

use super::LogStream;

/// Offsets `[stdout, stderr]` of a container's output.
pub type StreamOffsets = [u64; 2];

/// The output position of one container: what was received from the agent,
/// what is in the log file, and where that is recorded.
#[derive(Debug)]
pub struct OutputCursor {
    /// The offsets file; none for a cursor kept in memory only.
    record: Option<(PathBuf, File)>,
    /// End of the last chunk received, per stream.
    received: StreamOffsets,
    /// What the log file holds, per stream (recorded and acknowledged).
    written: StreamOffsets,
    /// Where acknowledgements go (to a task that tells the agent).
    acknowledge: Option<watch::Sender<StreamOffsets>>,
    record_failed: bool,
}

impl OutputCursor {
    /// The cursor recorded at `path`, created at zero if there is none. A
    /// record that cannot be read whole starts at zero too (the agent then
    /// sends what it still holds; the file may get it twice).
    pub fn open(path: &Path) -> std::io::Result<OutputCursor> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let mut bytes = [0u8; 16];
        let written = match file.read_exact_at(&mut bytes, 0) {
            Ok(()) => [
                u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")),
                u64::from_le_bytes(bytes[8..].try_into().expect("8 bytes")),
            ],
            Err(err) => {
                if file.metadata()?.len() != 0 {
                    tracing::warn!(path = %path.display(), error = %err, "unreadable container output offsets; starting from what the agent holds");
                }
                [0, 0]
            }
        };
        Ok(OutputCursor {
            record: Some((path.to_owned(), file)),
            received: written,
            written,
            acknowledge: None,
            record_failed: false,
        })
    }

    /// A cursor at zero that records nothing.
    pub fn in_memory() -> OutputCursor {
        OutputCursor {
            record: None,
            received: [0, 0],
            written: [0, 0],
            acknowledge: None,
            record_failed: false,
        }
    }

    /// Sends each new written position to `sender` once it is recorded.
    pub fn acknowledging_to(mut self, sender: watch::Sender<StreamOffsets>) -> OutputCursor {
        sender.send_replace(self.written);
        self.acknowledge = Some(sender);
        self
    }

    /// What the log file holds: where the agent should resume.
    pub fn written(&self) -> StreamOffsets {
        self.written
    }

    /// Takes a chunk of `len` bytes of `stream` that starts at `offset`;
    /// returns how many of its first bytes were already received (to skip).
    /// A chunk that starts later than expected means output the agent no
    /// longer held: that is logged with its size.
    pub fn receive(&mut self, stream: LogStream, offset: u64, len: usize) -> usize {
        let index = stream.index();
        let expected = self.received[index];
        let end = offset + len as u64;
        if offset > expected {
            tracing::warn!(
                stream = stream.as_str(),
                lost_bytes = offset - expected,
                "output of the container is missing from its log (the agent no longer held it)"
            );
        }
        self.received[index] = expected.max(end);
        usize::try_from(expected.saturating_sub(offset)).map_or(len, |skip| skip.min(len))
    }

    /// Everything received is in the log except `pending` bytes of each
    /// stream (unfinished lines held in memory): records and acknowledges
    /// that position.
    pub fn wrote(&mut self, pending: [usize; 2]) {
        let written = [0, 1].map(|i| self.received[i].saturating_sub(pending[i] as u64));
        if written == self.written {
            return;
        }
        self.written = written;
        if let Some((path, file)) = &self.record {
            let mut bytes = [0u8; 16];
            bytes[..8].copy_from_slice(&written[0].to_le_bytes());
            bytes[8..].copy_from_slice(&written[1].to_le_bytes());
            // A 16-byte write to the page cache: survives a crash of hulld,
            // which is what it is for.
            match file.write_all_at(&bytes, 0) {
                Ok(()) => self.record_failed = false,
                Err(err) if !self.record_failed => {
                    self.record_failed = true;
                    tracing::warn!(path = %path.display(), error = %err, "cannot record the container's output offsets; after a crash some output may be logged twice");
                }
                Err(_) => {}
            }
        }
        if let Some(sender) = &self.acknowledge {
            sender.send_replace(written);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use LogStream::{Stderr, Stdout};

    #[test]
    fn records_what_is_written_and_reopens_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.offsets");
        let mut cursor = OutputCursor::open(&path).unwrap();
        assert_eq!(cursor.written(), [0, 0]);
        assert_eq!(cursor.receive(Stdout, 0, 10), 0);
        assert_eq!(cursor.receive(Stderr, 0, 5), 0);
        // 3 bytes of stdout are an unfinished line, still in memory.
        cursor.wrote([3, 0]);
        assert_eq!(cursor.written(), [7, 5]);
        drop(cursor);
        let mut again = OutputCursor::open(&path).unwrap();
        assert_eq!(again.written(), [7, 5]);
        // The agent sends again from 7; nothing to skip.
        assert_eq!(again.receive(Stdout, 7, 3), 0);
        again.wrote([0, 0]);
        assert_eq!(OutputCursor::open(&path).unwrap().written(), [10, 5]);
    }

    #[test]
    fn repeated_bytes_are_skipped_and_gaps_jump_ahead() {
        let mut cursor = OutputCursor::in_memory();
        assert_eq!(cursor.receive(Stdout, 0, 10), 0);
        assert_eq!(cursor.receive(Stdout, 4, 10), 6, "overlap with 4..10");
        assert_eq!(cursor.receive(Stdout, 2, 5), 5, "all seen");
        assert_eq!(cursor.receive(Stdout, 20, 5), 0, "a gap");
        cursor.wrote([0, 0]);
        assert_eq!(cursor.written(), [25, 0]);
    }

    #[test]
    fn a_short_record_starts_at_zero() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.offsets");
        std::fs::write(&path, [1, 2, 3]).unwrap();
        assert_eq!(OutputCursor::open(&path).unwrap().written(), [0, 0]);
    }

    #[test]
    fn acknowledgements_follow_the_record() {
        let (sender, receiver) = watch::channel([9, 9]);
        let mut cursor = OutputCursor::in_memory().acknowledging_to(sender);
        assert_eq!(*receiver.borrow(), [0, 0]);
        cursor.receive(Stderr, 0, 4);
        cursor.wrote([0, 1]);
        assert_eq!(*receiver.borrow(), [0, 3]);
    }
}
