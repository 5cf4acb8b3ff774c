//! Idle timeouts: a connection wrapper that notes when bytes last moved,
//! and a watchdog that resolves once none have for the configured time.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// When a connection last carried bytes, shared by its wrapper and its
/// watchdog.
#[derive(Clone)]
pub struct Activity {
    start: Instant,
    /// Milliseconds after `start` of the last read or write.
    last_ms: Arc<AtomicU64>,
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

impl Activity {
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Notes traffic now.
    pub fn touch(&self) {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.fetch_max(now, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let now = self.start.elapsed();
        now.saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }

    /// Resolves once no traffic was noted for `timeout`.
    pub async fn idle(&self, timeout: Duration) {
        loop {
            let idle = self.idle_for();
            if idle >= timeout {
                return;
            }
            tokio::time::sleep(timeout - idle).await;
        }
    }
}

/// A connection that notes its traffic in an [`Activity`].
pub struct Watched<T> {
    inner: T,
    activity: Activity,
}

impl<T> Watched<T> {
    pub fn new(inner: T, activity: Activity) -> Self {
        Self { inner, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn traffic_postpones_the_idle_timeout() {
        let activity = Activity::new();
        let (a, mut b) = tokio::io::duplex(64);
        let mut watched = Watched::new(a, activity.clone());
        let timeout = Duration::from_secs(10);
        let idle = activity.idle(timeout);
        tokio::pin!(idle);
        for _ in 0..5 {
            tokio::select! {
                _ = &mut idle => panic!("idle while traffic flows"),
                _ = tokio::time::sleep(Duration::from_secs(6)) => {}
            }
            b.write_all(b"x").await.unwrap();
            let mut byte = [0u8; 1];
            watched.read_exact(&mut byte).await.unwrap();
        }
        let started = tokio::time::Instant::now();
        idle.await;
        let waited = started.elapsed();
        // The last byte moved just before this wait began.
        assert!(
            waited >= timeout && waited < timeout + Duration::from_millis(100),
            "{waited:?}"
        );
    }
}
