//! A process's output on its way to the reader (hulld): read from the pipes
//! (or terminal), held until the reader acknowledges it, sent as offset-tagged
//! chunks.
//!
//! Each stream (stdout, stderr) counts its bytes from 0. The agent keeps the
//! bytes it has read and not yet seen acknowledged, at most
//! [`MAX_UNACKNOWLEDGED_OUTPUT_BYTES`] per stream; it reads no further ahead,
//! so a process writing faster than the reader keeps blocks in `write(2)`.
//! When a reader goes away (hulld was killed with chunks in flight), the next
//! one says which offsets it has and gets everything after them again: no
//! output is lost between two hulld processes, and none is written twice.
//!
//! A reader that does not acknowledge (ExecSync: it does not outlive its
//! call) has each chunk forgotten once it is handed to the transport.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use hull_proto::limits::{MAX_STDIO_CHUNK_BYTES, MAX_UNACKNOWLEDGED_OUTPUT_BYTES};
use hull_proto::v1;
use tokio::sync::{Notify, OwnedMutexGuard, mpsc};

use crate::stdio::{Output, StdioError};

/// Index of a stream in per-stream arrays.
const STDOUT: usize = 0;
const STDERR: usize = 1;

fn stream_name(index: usize) -> &'static str {
    if index == STDOUT { "stdout" } else { "stderr" }
}

/// Bytes of one stream the agent holds: `data` starts at offset `start`.
#[derive(Default)]
struct Held {
    start: u64,
    data: Vec<u8>,
}

impl Held {
    fn end(&self) -> u64 {
        self.start + self.data.len() as u64
    }

    fn forget_below(&mut self, offset: u64) {
        if offset <= self.start {
            return;
        }
        let count = usize::try_from(offset - self.start)
            .unwrap_or(usize::MAX)
            .min(self.data.len());
        self.data.drain(..count);
        self.start += count as u64;
        // A burst's buffer is not kept for an idle process.
        if self.data.is_empty() && self.data.capacity() > MAX_STDIO_CHUNK_BYTES {
            self.data = Vec::new();
        }
    }
}

/// The output of one process that the agent has read and holds for its
/// reader. Shared by the reader's pump and `AcknowledgeOutput` calls.
#[derive(Default)]
pub struct HeldOutput {
    streams: Mutex<[Held; 2]>,
    /// Wakes a pump waiting for room (an acknowledgement freed some).
    freed: Notify,
}

impl HeldOutput {
    fn lock(&self) -> MutexGuard<'_, [Held; 2]> {
        // The state is plain bytes and offsets, consistent at every step.
        self.streams.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new reader starts at `from` (`[stdout, stderr]` offsets it has):
    /// output below is forgotten. Returns where each stream really starts
    /// (later than asked if the agent no longer holds what was asked for).
    pub fn resume(&self, from: [u64; 2]) -> Result<[u64; 2], StdioError> {
        let streams = self.forget_below_all(from)?;
        Ok([streams[STDOUT].start, streams[STDERR].start])
    }

    /// The reader has kept each stream up to `upto`.
    pub fn acknowledge(&self, upto: [u64; 2]) -> Result<(), StdioError> {
        self.forget_below_all(upto).map(drop)
    }

    /// Forgets each stream's output below `offsets`, unless an offset is
    /// beyond what the process has written (then nothing changes).
    fn forget_below_all(&self, offsets: [u64; 2]) -> Result<MutexGuard<'_, [Held; 2]>, StdioError> {
        let mut streams = self.lock();
        for (index, held) in streams.iter().enumerate() {
            if offsets[index] > held.end() {
                return Err(StdioError::OffsetBeyondOutput {
                    stream: stream_name(index),
                    offset: offsets[index],
                    end: held.end(),
                });
            }
        }
        for (index, held) in streams.iter_mut().enumerate() {
            held.forget_below(offsets[index]);
        }
        self.freed.notify_one();
        Ok(streams)
    }

    /// How many more bytes of each stream may be read.
    fn room(&self) -> [usize; 2] {
        let streams = self.lock();
        [STDOUT, STDERR]
            .map(|i| MAX_UNACKNOWLEDGED_OUTPUT_BYTES.saturating_sub(streams[i].data.len()))
    }

    fn append(&self, index: usize, bytes: &[u8]) {
        self.lock()[index].data.extend_from_slice(bytes);
    }

    fn forget_below(&self, index: usize, offset: u64) {
        self.lock()[index].forget_below(offset);
    }

    /// The next chunk held but not sent, given the next offset to send of
    /// each stream (moved forward past what was forgotten meanwhile).
    fn next_unsent(&self, next: &mut [u64; 2]) -> Option<(usize, u64, Vec<u8>)> {
        let streams = self.lock();
        for (index, held) in streams.iter().enumerate() {
            next[index] = next[index].max(held.start);
            if next[index] < held.end() {
                let from = (next[index] - held.start) as usize;
                let to = held.data.len().min(from + MAX_STDIO_CHUNK_BYTES);
                return Some((index, next[index], held.data[from..to].to_vec()));
            }
        }
        None
    }
}

/// Sends the process's output to `tx`, starting at the offsets `next`
/// (from [`HeldOutput::resume`]), as bounded chunks, until both streams have
/// ended and everything held was sent, or the receiver goes away.
pub async fn pump(
    mut output: OwnedMutexGuard<Output>,
    held: Arc<HeldOutput>,
    mut next: [u64; 2],
    acknowledges: bool,
    tx: mpsc::Sender<Result<v1::OutputChunk, tonic::Status>>,
) {
    let mut out_buf = vec![0u8; MAX_STDIO_CHUNK_BYTES];
    let mut err_buf = vec![0u8; MAX_STDIO_CHUNK_BYTES];
    loop {
        if let Some((index, offset, data)) = held.next_unsent(&mut next) {
            let end = offset + data.len() as u64;
            let stream = if index == STDOUT {
                v1::OutputStream::Stdout
            } else {
                v1::OutputStream::Stderr
            };
            let chunk = v1::OutputChunk {
                stream: stream as i32,
                data,
                offset,
            };
            if tx.send(Ok(chunk)).await.is_err() {
                return;
            }
            next[index] = end;
            if !acknowledges {
                held.forget_below(index, end);
            }
            continue;
        }
        let Output { stdout, stderr } = &mut *output;
        if stdout.is_none() && stderr.is_none() {
            return;
        }
        let room = held.room();
        let out_len = room[STDOUT].min(MAX_STDIO_CHUNK_BYTES);
        let err_len = room[STDERR].min(MAX_STDIO_CHUNK_BYTES);
        let waiting_for_room =
            (stdout.is_some() && out_len == 0) || (stderr.is_some() && err_len == 0);
        let (index, result) = tokio::select! {
            r = async { stdout.as_ref().unwrap().read(&mut out_buf[..out_len]).await }, if stdout.is_some() && out_len > 0 => (STDOUT, r),
            r = async { stderr.as_ref().unwrap().read(&mut err_buf[..err_len]).await }, if stderr.is_some() && err_len > 0 => (STDERR, r),
            () = held.freed.notified(), if waiting_for_room => continue,
            () = tx.closed() => return,
        };
        let n = result.unwrap_or_else(|err| {
            tracing::warn!(error = %err, stream = stream_name(index), "reading process output failed");
            0
        });
        if n == 0 {
            if index == STDOUT {
                *stdout = None;
            } else {
                *stderr = None;
            }
            continue;
        }
        let buf = if index == STDOUT { &out_buf } else { &err_buf };
        held.append(index, &buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::stdio::ProcessStdio;

    type Chunks = mpsc::Receiver<Result<v1::OutputChunk, tonic::Status>>;

    /// Starts a reader once the previous one has let go.
    async fn start(stdio: &ProcessStdio, from: [u64; 2], acknowledges: bool) -> Chunks {
        let output = loop {
            match stdio.attach_output() {
                Ok(output) => break output,
                Err(_) => tokio::task::yield_now().await,
            }
        };
        let held = stdio.held_output();
        let next = held.resume(from).unwrap();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(pump(output, held, next, acknowledges, tx));
        rx
    }

    async fn next_chunk(rx: &mut Chunks) -> v1::OutputChunk {
        rx.recv().await.expect("a chunk").expect("no error")
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_new_reader_gets_again_what_was_not_acknowledged() {
        let (stdio, child) = ProcessStdio::pipes(false).unwrap();
        let mut out = std::fs::File::from(child.stdout);
        let mut err = std::fs::File::from(child.stderr);
        out.write_all(b"one\ntwo\n").unwrap();
        err.write_all(b"oops\n").unwrap();

        let mut first = start(&stdio, [0, 0], true).await;
        let mut got = Vec::new();
        for _ in 0..2 {
            got.push(next_chunk(&mut first).await);
        }
        got.sort_by_key(|c| c.stream);
        assert_eq!(
            (got[0].offset, got[0].data.as_slice()),
            (0, &b"one\ntwo\n"[..])
        );
        assert_eq!((got[1].offset, got[1].data.as_slice()), (0, &b"oops\n"[..]));
        // The reader kept "one\n" of stdout and nothing of stderr, then died.
        stdio.held_output().acknowledge([4, 0]).unwrap();
        drop(first);

        out.write_all(b"three\n").unwrap();
        drop(out);
        drop(err);
        let mut second = start(&stdio, [4, 0], true).await;
        let mut texts = [Vec::new(), Vec::new()];
        let mut offsets = [None, None];
        while let Some(chunk) = second.recv().await {
            let chunk = chunk.unwrap();
            let index = usize::from(chunk.stream == v1::OutputStream::Stderr as i32);
            offsets[index].get_or_insert(chunk.offset);
            texts[index].extend(chunk.data);
        }
        assert_eq!(texts[STDOUT], b"two\nthree\n");
        assert_eq!(texts[STDERR], b"oops\n");
        assert_eq!(offsets, [Some(4), Some(0)]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn offsets_beyond_the_output_are_refused() {
        let (stdio, child) = ProcessStdio::pipes(false).unwrap();
        std::fs::File::from(child.stdout).write_all(b"abc").unwrap();
        let held = stdio.held_output();
        let mut rx = start(&stdio, [0, 0], true).await;
        assert_eq!(next_chunk(&mut rx).await.data, b"abc");
        assert!(matches!(
            held.acknowledge([4, 0]),
            Err(StdioError::OffsetBeyondOutput {
                stream: "stdout",
                offset: 4,
                end: 3
            })
        ));
        assert!(matches!(
            held.resume([0, 1]),
            Err(StdioError::OffsetBeyondOutput {
                stream: "stderr",
                ..
            })
        ));
        held.acknowledge([3, 0]).unwrap();
        // A stale acknowledgement changes nothing.
        held.acknowledge([1, 0]).unwrap();
        assert_eq!(held.resume([0, 0]).unwrap(), [3, 0]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn reading_stops_at_the_limit_until_acknowledged() {
        let (stdio, child) = ProcessStdio::pipes(false).unwrap();
        let total = MAX_UNACKNOWLEDGED_OUTPUT_BYTES + 3 * MAX_STDIO_CHUNK_BYTES;
        let writer = std::thread::spawn(move || {
            let mut out = std::fs::File::from(child.stdout);
            out.write_all(&vec![b'x'; total]).unwrap();
        });
        let held = stdio.held_output();
        let mut rx = start(&stdio, [0, 0], true).await;
        let mut received = 0u64;
        while received < MAX_UNACKNOWLEDGED_OUTPUT_BYTES as u64 {
            let chunk = next_chunk(&mut rx).await;
            assert_eq!(chunk.offset, received, "contiguous");
            received += chunk.data.len() as u64;
        }
        // Nothing more comes before an acknowledgement.
        let early = tokio::time::timeout(std::time::Duration::from_millis(200), rx.recv()).await;
        assert!(early.is_err(), "the agent read past the limit");
        while received < total as u64 {
            held.acknowledge([received, 0]).unwrap();
            let chunk = next_chunk(&mut rx).await;
            assert_eq!(chunk.offset, received, "contiguous");
            received += chunk.data.len() as u64;
        }
        writer.join().unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn without_acknowledgements_sent_output_is_forgotten() {
        let (stdio, child) = ProcessStdio::pipes(false).unwrap();
        std::fs::File::from(child.stdout)
            .write_all(b"once")
            .unwrap();
        let mut rx = start(&stdio, [0, 0], false).await;
        assert_eq!(next_chunk(&mut rx).await.data, b"once");
        drop(rx);
        // The pump task notices the closed receiver and ends.
        let held = stdio.held_output();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while stdio.attach_output().is_err() {
            assert!(tokio::time::Instant::now() < deadline);
            tokio::task::yield_now().await;
        }
        assert_eq!(held.resume([0, 0]).unwrap(), [4, 0]);
    }
}
