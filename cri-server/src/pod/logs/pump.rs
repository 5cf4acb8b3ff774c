//! The task that writes one container's `ReadOutput` stream to its log file.
//!
//! Backpressure: the task asks the stream for the next chunk only when the
//! previous one is in the file, so a container that writes faster than the
//! disk takes it fills the HTTP/2 window, then the agent's pipe, and then
//! blocks in `write(2)`, as it would on a slow terminal. hulld holds one
//! chunk (≤ 32 KiB) and one partial line per stream per container.
//!
//! File writes run on tokio's blocking pool, one chunk at a time, under a
//! mutex that [`LogPump::reopen`] takes too: a reopen waits for at most one
//! chunk's write, and each chunk's records go whole to one file.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use futures::{FutureExt, Stream, StreamExt};
use hull_proto::v1::{OutputChunk, OutputStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::{ContainerLog, LogError, LogStream, OutputCursor};

/// How a pump ended without an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PumpEnd {
    /// The stream ended: the process closed its stdout and stderr.
    StreamEnded,
    /// [`LogPump::stop`] ended it; the process may still be writing (its
    /// output waits in the guest for the next reader).
    Stopped,
}

/// Opens the log file at `path` (see [`ContainerLog::open`]) and starts a
/// task, on the current tokio runtime, that writes `chunks` into it, from the
/// position `cursor` (see [`OutputCursor`]).
pub fn spawn_log_pump<S>(
    path: PathBuf,
    chunks: S,
    cursor: OutputCursor,
) -> Result<LogPump, LogError>
where
    S: Stream<Item = Result<OutputChunk, tonic::Status>> + Send + Unpin + 'static,
{
    let log = ContainerLog::open(&path)?;
    Ok(LogPump::start(log, chunks, cursor))
}

/// A running log pump: the handle to reopen its file, stop it, or wait for
/// its end. Dropping the handle leaves the task running until its stream
/// ends.
#[derive(Debug)]
pub struct LogPump {
    path: PathBuf,
    log: Arc<Mutex<ContainerLog>>,
    stop: mpsc::Sender<()>,
    task: JoinHandle<Result<PumpEnd, LogError>>,
}

impl LogPump {
    /// Starts a task, on the current tokio runtime, that writes `chunks`
    /// into `log` until the stream ends, fails or [`stop`](Self::stop) is
    /// called, and then writes the streams' unfinished lines.
    ///
    /// A chunk that cannot be written is dropped and logged, and the pump
    /// goes on reading (as containerd does): a full disk must not block the
    /// container.
    pub fn start<S>(log: ContainerLog, chunks: S, cursor: OutputCursor) -> Self
    where
        S: Stream<Item = Result<OutputChunk, tonic::Status>> + Send + Unpin + 'static,
    {
        let path = log.path().to_owned();
        let log = Arc::new(Mutex::new(log));
        let (stop, stop_requests) = mpsc::channel(1);
        let pumper = Pumper {
            path: path.clone(),
            log: Arc::clone(&log),
            cursor,
            failing_since: None,
        };
        let span = tracing::debug_span!("container_log", path = %path.display());
        let task = tokio::spawn(pumper.run(chunks, stop_requests).instrument(span));
        Self {
            path,
            log,
            stop,
            task,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the log file again at the same path (`ReopenContainerLog`,
    /// after the kubelet renamed the file). Waits for at most the chunk
    /// being written. On an error (the directory is gone, ...) the pump
    /// goes on writing to the file it had.
    pub async fn reopen(&self) -> Result<(), LogError> {
        let log = Arc::clone(&self.log);
        tokio::task::spawn_blocking(move || lock(&log).reopen())
            .await
            .map_err(|source| LogError::Task {
                path: self.path.clone(),
                source,
            })?
    }

    /// Ends the pump now (hulld is shutting down): writes the chunks that
    /// have already arrived and the unfinished lines, then drops the stream.
    pub async fn stop(self) -> Result<PumpEnd, LogError> {
        // A full channel means a stop is already asked for; a closed one,
        // that the task has ended: either way, its result tells.
        let _ = self.stop.try_send(());
        self.finished().await
    }

    /// Waits until the stream ends (or fails) and everything is written.
    pub async fn finished(self) -> Result<PumpEnd, LogError> {
        let Self { path, task, .. } = self;
        task.await
            .map_err(|source| LogError::Task { path, source })?
    }

    /// Whether the task has ended ([`finished`](Self::finished) then returns
    /// at once).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

fn lock(log: &Mutex<ContainerLog>) -> MutexGuard<'_, ContainerLog> {
    // A panic while writing leaves the log usable: its state is a file and
    // bytes of unfinished lines.
    log.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Pumper {
    path: PathBuf,
    log: Arc<Mutex<ContainerLog>>,
    /// Which output is in the file; recorded and acknowledged after writes.
    cursor: OutputCursor,
    /// When writes started failing, and how many bytes were dropped since.
    failing_since: Option<(SystemTime, usize)>,
}

impl Pumper {
    async fn run<S>(
        mut self,
        mut chunks: S,
        mut stop_requests: mpsc::Receiver<()>,
    ) -> Result<PumpEnd, LogError>
    where
        S: Stream<Item = Result<OutputChunk, tonic::Status>> + Unpin,
    {
        tracing::debug!("container log pump started");
        let mut handle_alive = true;
        let end = 'pump: loop {
            tokio::select! {
                biased;
                request = stop_requests.recv(), if handle_alive => {
                    if request.is_none() {
                        // The handle was dropped: go on until the stream ends.
                        handle_alive = false;
                        continue;
                    }
                    while let Some(item) = chunks.next().now_or_never() {
                        if let ControlFlow::Break(end) = self.take(item).await {
                            break 'pump end;
                        }
                    }
                    break Ok(PumpEnd::Stopped);
                }
                item = chunks.next() => {
                    if let ControlFlow::Break(end) = self.take(item).await {
                        break end;
                    }
                }
            }
        };
        // Unfinished lines are written whatever the end.
        match self.blocking(|log| log.finish(SystemTime::now())).await {
            Ok(Ok(())) => self.cursor.wrote([0, 0]),
            Ok(Err(err)) => self.write_failed(&err, 0),
            Err(err) => tracing::error!(
                error = %crate::error::error_chain(&err),
                "cannot write the unfinished lines of a container's output"
            ),
        }
        match &end {
            Ok(how) => tracing::debug!(end = ?how, "container log pump ended"),
            Err(err) => {
                tracing::warn!(error = %crate::error::error_chain(err), "container log pump ended")
            }
        }
        end
    }

    /// Handles one item of the stream (`None`: its end).
    async fn take(
        &mut self,
        item: Option<Result<OutputChunk, tonic::Status>>,
    ) -> ControlFlow<Result<PumpEnd, LogError>> {
        let chunk = match item {
            None => return ControlFlow::Break(Ok(PumpEnd::StreamEnded)),
            Some(Err(status)) => {
                return ControlFlow::Break(Err(LogError::Stream {
                    path: self.path.clone(),
                    source: Box::new(status),
                }));
            }
            Some(Ok(chunk)) => chunk,
        };
        let stream = match hull_proto::validate::output_chunk(&chunk) {
            Ok(OutputStream::Stderr) => LogStream::Stderr,
            // (validation refuses OUTPUT_STREAM_UNSPECIFIED)
            Ok(_) => LogStream::Stdout,
            Err(source) => {
                return ControlFlow::Break(Err(LogError::BadChunk {
                    path: self.path.clone(),
                    source,
                }));
            }
        };
        let skip = self.cursor.receive(stream, chunk.offset, chunk.data.len());
        let mut data = chunk.data;
        if skip == data.len() {
            return ControlFlow::Continue(());
        }
        data.drain(..skip);
        let len = data.len();
        let now = SystemTime::now();
        let written = self
            .blocking(move |log| {
                let result = log.write(stream, &data, now);
                let pending = [LogStream::Stdout, LogStream::Stderr]
                    .map(|s| log.formatter().pending(s).len());
                (result, pending)
            })
            .await;
        match written {
            Ok((result, pending)) => {
                match result {
                    Ok(()) => self.write_succeeded(),
                    // Dropped like written: a full disk must not stop the
                    // agent's output.
                    Err(err) => self.write_failed(&err, len),
                }
                self.cursor.wrote(pending);
            }
            Err(err) => return ControlFlow::Break(Err(err)),
        }
        ControlFlow::Continue(())
    }

    /// Runs `f` on the log in tokio's blocking pool.
    async fn blocking<T, F>(&self, f: F) -> Result<T, LogError>
    where
        T: Send + 'static,
        F: FnOnce(&mut ContainerLog) -> T + Send + 'static,
    {
        let log = Arc::clone(&self.log);
        tokio::task::spawn_blocking(move || f(&mut lock(&log)))
            .await
            .map_err(|source| LogError::Task {
                path: self.path.clone(),
                source,
            })
    }

    /// Logs the first failure of a run of failures only.
    fn write_failed(&mut self, err: &LogError, dropped: usize) {
        match &mut self.failing_since {
            Some((_, total)) => *total += dropped,
            None => {
                tracing::error!(
                    error = %crate::error::error_chain(err),
                    "cannot write container output to its log; dropping it until writes succeed again"
                );
                self.failing_since = Some((SystemTime::now(), dropped));
            }
        }
    }

    fn write_succeeded(&mut self) {
        if let Some((since, dropped)) = self.failing_since.take() {
            let seconds = since.elapsed().unwrap_or_default().as_secs();
            tracing::warn!(
                dropped_bytes = dropped,
                failing_seconds = seconds,
                "container log writes succeed again"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::stream;
    use tokio_stream::wrappers::ReceiverStream;

    use super::*;
    use crate::pod::logs::testing::{read_records, reassemble, summary};

    type Item = Result<OutputChunk, tonic::Status>;

    fn out(data: &str) -> Item {
        Ok(OutputChunk {
            stream: OutputStream::Stdout as i32,
            data: data.as_bytes().to_vec(),
            offset: 0,
        })
    }

    fn err(data: &str) -> Item {
        Ok(OutputChunk {
            stream: OutputStream::Stderr as i32,
            data: data.as_bytes().to_vec(),
            offset: 0,
        })
    }

    /// Numbers the chunks' offsets as the agent does.
    fn numbered<S>(chunks: S) -> impl Stream<Item = Item> + Send + Unpin + 'static
    where
        S: Stream<Item = Item> + Send + Unpin + 'static,
    {
        let mut next = [0u64; 2];
        chunks.map(move |item| {
            item.map(|mut chunk| {
                let index = usize::from(chunk.stream == OutputStream::Stderr as i32);
                chunk.offset = next[index];
                next[index] += chunk.data.len() as u64;
                chunk
            })
        })
    }

    /// A pump from offset 0 that records nothing.
    fn spawn<S>(path: PathBuf, chunks: S) -> Result<LogPump, LogError>
    where
        S: Stream<Item = Item> + Send + Unpin + 'static,
    {
        spawn_log_pump(path, numbered(chunks), OutputCursor::in_memory())
    }

    fn at(offset: u64, item: Item) -> Item {
        item.map(|chunk| OutputChunk { offset, ..chunk })
    }

    /// Waits until `check` holds, for at most 10 s.
    async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !check() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting until {what}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn writes_the_stream_and_its_unfinished_lines_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let chunks = stream::iter(vec![
            out("hello\nwor"),
            err("warn"),
            out("ld\n"),
            err("ing\n"),
            out("bye"),
        ]);
        let pump = spawn(path.clone(), chunks).unwrap();
        assert_eq!(pump.path(), path);
        assert_eq!(pump.finished().await.unwrap(), PumpEnd::StreamEnded);
        assert_eq!(
            summary(&read_records(&path)),
            [
                "stdout F hello",
                "stdout F world",
                "stderr F warning",
                "stdout P bye"
            ]
        );
    }

    #[tokio::test]
    async fn a_pump_after_a_crash_resumes_where_the_file_ends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let offsets = dir.path().join("0.offsets");
        let (sender, receiver) = mpsc::channel(4);
        let cursor = OutputCursor::open(&offsets).unwrap();
        let first = spawn_log_pump(path.clone(), ReceiverStream::new(receiver), cursor).unwrap();
        sender.send(at(0, out("a\nb\npar"))).await.unwrap();
        sender.send(at(0, err("e1\n"))).await.unwrap();
        wait_until("three records are written", || {
            read_records(&path).len() == 3
        })
        .await;
        // What the record says at this moment is what a crash would leave:
        // "par" is an unfinished line in memory, not in the file.
        let crashed = dir.path().join("crashed.offsets");
        wait_until("the offsets are recorded", || {
            std::fs::read(&offsets).is_ok_and(|b| b.len() == 16 && b[8] == 3)
        })
        .await;
        std::fs::copy(&offsets, &crashed).unwrap();
        drop(sender);
        first.finished().await.unwrap();
        std::fs::write(&path, "").unwrap();

        let cursor = OutputCursor::open(&crashed).unwrap();
        assert_eq!(cursor.written(), [4, 3]);
        // The agent sends again from there; a repeated chunk is cut.
        let chunks = stream::iter(vec![
            at(4, out("par")),
            at(4, out("partial\nc\n")),
            at(3, err("e2\n")),
        ]);
        let second = spawn_log_pump(path.clone(), chunks, cursor).unwrap();
        second.finished().await.unwrap();
        assert_eq!(
            summary(&read_records(&path)),
            ["stdout F partial", "stdout F c", "stderr F e2"]
        );
        assert_eq!(OutputCursor::open(&crashed).unwrap().written(), [14, 6]);
    }

    #[tokio::test]
    async fn a_stream_error_keeps_what_came_before_and_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let chunks = stream::iter(vec![
            out("one\ntw"),
            err("e\n"),
            Err(tonic::Status::unavailable("vsock connection reset")),
            out("never written\n"),
        ]);
        let pump = spawn(path.clone(), chunks).unwrap();
        let error = pump.finished().await.unwrap_err();
        assert!(
            matches!(&error, LogError::Stream { source, .. } if source.code() == tonic::Code::Unavailable)
        );
        assert_eq!(error.path(), path);
        let chain = crate::error::error_chain(&error);
        assert!(
            chain.contains(&path.display().to_string()) && chain.contains("vsock connection reset"),
            "{chain}"
        );
        assert_eq!(
            summary(&read_records(&path)),
            ["stdout F one", "stderr F e", "stdout P tw"]
        );
    }

    #[tokio::test]
    async fn an_invalid_chunk_ends_the_pump() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let unspecified = Ok(OutputChunk {
            stream: OutputStream::Unspecified as i32,
            data: b"?\n".to_vec(),
            offset: 0,
        });
        let chunks = stream::iter(vec![out("ok\n"), unspecified, out("after\n")]);
        let error = spawn(path.clone(), chunks)
            .unwrap()
            .finished()
            .await
            .unwrap_err();
        assert!(matches!(error, LogError::BadChunk { .. }), "{error}");
        assert_eq!(summary(&read_records(&path)), ["stdout F ok"]);
    }

    #[tokio::test]
    async fn an_open_error_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gone").join("0.log");
        let error = spawn(path.clone(), stream::empty()).unwrap_err();
        assert!(matches!(&error, LogError::Open { .. }));
        assert!(
            error.to_string().contains(&path.display().to_string()),
            "{error}"
        );
    }

    #[tokio::test]
    async fn stop_writes_what_has_arrived_and_the_unfinished_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let (sender, receiver) = mpsc::channel(8);
        let pump = spawn(path.clone(), ReceiverStream::new(receiver)).unwrap();
        for item in [out("a\n"), err("b\nhalf "), out("c\n"), err("line")] {
            sender.send(item).await.unwrap();
        }
        assert_eq!(pump.stop().await.unwrap(), PumpEnd::Stopped);
        assert_eq!(
            summary(&read_records(&path)),
            [
                "stdout F a",
                "stderr F b",
                "stdout F c",
                "stderr P half line"
            ]
        );
        assert!(sender.is_closed(), "the stream is dropped");
    }

    #[tokio::test]
    async fn a_dropped_handle_or_finished_keeps_the_pump_running() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let (sender, receiver) = mpsc::channel(1);
        let pump = spawn(path.clone(), ReceiverStream::new(receiver)).unwrap();
        let waiting = tokio::spawn(pump.finished());
        for n in 0..50 {
            sender.send(out(&format!("line {n}\n"))).await.unwrap();
        }
        drop(sender);
        assert_eq!(waiting.await.unwrap().unwrap(), PumpEnd::StreamEnded);
        assert_eq!(read_records(&path).len(), 50);
    }

    #[tokio::test]
    async fn a_failed_reopen_is_returned_and_the_pump_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let container_dir = dir.path().join("app");
        std::fs::create_dir(&container_dir).unwrap();
        let path = container_dir.join("0.log");
        let moved = dir.path().join("0.log.1");
        let (sender, receiver) = mpsc::channel(1);
        let pump = spawn(path.clone(), ReceiverStream::new(receiver)).unwrap();
        sender.send(out("one\n")).await.unwrap();
        wait_until("the first line is written", || {
            path.metadata().is_ok_and(|m| m.len() > 0)
        })
        .await;
        std::fs::rename(&path, &moved).unwrap();
        std::fs::remove_dir(&container_dir).unwrap();

        let error = pump.reopen().await.unwrap_err();
        assert!(matches!(&error, LogError::Open { .. }), "{error}");
        assert!(
            error.to_string().contains(&path.display().to_string()),
            "{error}"
        );

        sender.send(out("two\n")).await.unwrap();
        drop(sender);
        assert_eq!(pump.finished().await.unwrap(), PumpEnd::StreamEnded);
        assert_eq!(
            summary(&read_records(&moved)),
            ["stdout F one", "stdout F two"]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reopen_after_rename_while_writing_loses_and_repeats_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let rotated = dir.path().join("0.log.20261122-100000");
        let (sender, receiver) = mpsc::channel(1);
        let pump = spawn(path.clone(), ReceiverStream::new(receiver)).unwrap();

        // Lines of varied length sent in chunks that cut them anywhere, so
        // that partial lines are pending when the file is renamed; stderr
        // between them. The second half is sent after the reopen, so that
        // both files get records.
        let mut expected = Vec::new();
        let mut text = Vec::new();
        for n in 0..4000 {
            let line = format!("line {n} {}\n", "x".repeat(n % 97));
            text.extend_from_slice(line.as_bytes());
            expected.extend_from_slice(line.as_bytes());
        }
        let half = text.len() / 2;
        let (rotated_tx, rotated_rx) = tokio::sync::oneshot::channel::<()>();
        let producer = tokio::spawn(async move {
            let mut rotated_rx = Some(rotated_rx);
            for (index, piece) in text.chunks(1000).enumerate() {
                if index * 1000 >= half
                    && let Some(signal) = rotated_rx.take()
                {
                    signal.await.unwrap();
                }
                sender
                    .send(out(std::str::from_utf8(piece).unwrap()))
                    .await
                    .unwrap();
                sender.send(err("e\n")).await.unwrap();
            }
        });

        wait_until("some records are written", || {
            path.metadata().is_ok_and(|m| m.len() > 0)
        })
        .await;
        std::fs::rename(&path, &rotated).unwrap();
        pump.reopen().await.unwrap();
        rotated_tx.send(()).unwrap();
        producer.await.unwrap();
        assert_eq!(pump.finished().await.unwrap(), PumpEnd::StreamEnded);

        let old = read_records(&rotated);
        let new = read_records(&path);
        assert!(
            !old.is_empty() && !new.is_empty(),
            "{} and {} records",
            old.len(),
            new.len()
        );
        let all: Vec<_> = old.into_iter().chain(new).collect();
        assert_eq!(reassemble(&all, LogStream::Stdout), expected);
        let chunk_count = expected.len().div_ceil(1000);
        assert_eq!(
            reassemble(&all, LogStream::Stderr),
            "e\n".repeat(chunk_count).into_bytes()
        );
    }
}
