//! One-time URLs: each Exec, Attach or PortForward call leaves its request
//! here under an unguessable token, and the streaming server takes it back
//! (once) when the client comes with the URL.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::StreamRequest;
use crate::server::new_id;

/// Requests waiting for their client at once; beyond this the RPC is
/// refused (a client that asks for URLs and never uses them cannot grow
/// hulld's memory).
pub const MAX_PENDING: usize = 4096;

/// Which path a URL was issued for: a token is only good on its own path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamKind {
    Exec,
    Attach,
    PortForward,
}

impl StreamKind {
    /// The URL path segment: `/<segment>/<token>`.
    pub fn path_segment(self) -> &'static str {
        match self {
            StreamKind::Exec => "exec",
            StreamKind::Attach => "attach",
            StreamKind::PortForward => "portforward",
        }
    }

    pub fn from_path_segment(segment: &str) -> Option<Self> {
        match segment {
            "exec" => Some(StreamKind::Exec),
            "attach" => Some(StreamKind::Attach),
            "portforward" => Some(StreamKind::PortForward),
            _ => None,
        }
    }
}

/// Why a token cannot be issued or used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("{MAX_PENDING} streaming URLs are waiting for their clients already")]
    TooManyPending,
    /// Unknown, used, expired or issued for another path: the client is not
    /// told which.
    #[error("unknown or expired streaming URL")]
    Unknown,
}

struct Pending {
    request: StreamRequest,
    expires: Instant,
}

/// The pending requests, by token.
pub struct Tokens {
    ttl: Duration,
    pending: Mutex<HashMap<String, Pending>>,
}

impl Tokens {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            pending: Mutex::new(HashMap::new()),
        }
    }

    /// Keeps `request` and returns the token that names it: 256 random
    /// bits in hex.
    pub fn issue(&self, request: StreamRequest) -> Result<String, TokenError> {
        self.issue_at(request, Instant::now())
    }

    fn issue_at(&self, request: StreamRequest, now: Instant) -> Result<String, TokenError> {
        let token = new_id();
        let mut pending = self.lock();
        pending.retain(|_, p| p.expires > now);
        if pending.len() >= MAX_PENDING {
            return Err(TokenError::TooManyPending);
        }
        pending.insert(
            token.clone(),
            Pending {
                request,
                expires: now + self.ttl,
            },
        );
        Ok(token)
    }

    /// Takes the request of `token` if it was issued for `kind` and has not
    /// expired. A token is gone after its first use, good or bad: a token
    /// presented on the wrong path is burnt too.
    pub fn redeem(&self, token: &str, kind: StreamKind) -> Result<StreamRequest, TokenError> {
        let pending = self.lock().remove(token).ok_or(TokenError::Unknown)?;
        if pending.expires <= Instant::now() || pending.request.kind() != kind {
            return Err(TokenError::Unknown);
        }
        Ok(pending.request)
    }

    /// Requests still waiting (expired ones included until the next issue).
    pub fn pending(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        // A panic while holding the lock cannot leave the map inconsistent
        // (every change is one insert or remove), so a poisoned lock is
        // still usable.
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::{ExecTarget, PortForwardTarget};

    fn exec() -> StreamRequest {
        StreamRequest::Exec(ExecTarget {
            container_id: "c1".into(),
            cmd: vec!["true".into()],
            tty: false,
            stdin: false,
            stdout: true,
            stderr: true,
        })
    }

    #[test]
    fn a_token_is_redeemed_once_for_its_own_request() {
        let tokens = Tokens::new(Duration::from_secs(60));
        let token = tokens.issue(exec()).unwrap();
        assert_eq!(tokens.redeem(&token, StreamKind::Exec).unwrap(), exec());
        assert_eq!(
            tokens.redeem(&token, StreamKind::Exec),
            Err(TokenError::Unknown)
        );
    }

    #[test]
    fn tokens_are_long_unique_and_url_safe() {
        let tokens = Tokens::new(Duration::from_secs(60));
        let a = tokens.issue(exec()).unwrap();
        let b = tokens.issue(exec()).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn a_token_on_the_wrong_path_is_refused_and_burnt() {
        let tokens = Tokens::new(Duration::from_secs(60));
        let token = tokens.issue(exec()).unwrap();
        assert_eq!(
            tokens.redeem(&token, StreamKind::Attach),
            Err(TokenError::Unknown)
        );
        assert_eq!(
            tokens.redeem(&token, StreamKind::Exec),
            Err(TokenError::Unknown)
        );
    }

    #[test]
    fn an_expired_token_is_refused() {
        let tokens = Tokens::new(Duration::from_millis(1));
        let token = tokens
            .issue(StreamRequest::PortForward(PortForwardTarget {
                pod_id: "p".into(),
                ports: vec![80],
            }))
            .unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(
            tokens.redeem(&token, StreamKind::PortForward),
            Err(TokenError::Unknown)
        );
        assert_eq!(
            tokens.redeem("made-up", StreamKind::Exec),
            Err(TokenError::Unknown)
        );
    }

    #[test]
    fn pending_requests_are_bounded_and_expired_ones_make_room() {
        let tokens = Tokens::new(Duration::from_secs(60));
        let start = Instant::now();
        for _ in 0..MAX_PENDING {
            tokens.issue_at(exec(), start).unwrap();
        }
        assert_eq!(
            tokens.issue_at(exec(), start + Duration::from_secs(59)),
            Err(TokenError::TooManyPending)
        );
        tokens
            .issue_at(exec(), start + Duration::from_secs(61))
            .unwrap();
        assert_eq!(tokens.pending(), 1);
    }
}
