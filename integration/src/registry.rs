//! A real OCI registry on loopback for tests and the dev node: Debian's
//! `docker-registry` (distribution 2.8), with its own config file and storage
//! in a temporary folder, on a free port of 127.0.0.1, optionally behind
//! htpasswd basic auth. Stopped by its pid when dropped.

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The registry binary Debian's `docker-registry` package installs.
pub const REGISTRY_BINARY: &str = "/usr/bin/docker-registry";

/// How long the registry may take to answer after it starts.
const START_DEADLINE: Duration = Duration::from_secs(20);

/// Starting the test registry failed.
#[derive(Debug, thiserror::Error)]
pub enum TestRegistryError {
    /// `docker-registry` is not installed.
    #[error(
        "{REGISTRY_BINARY} is missing; install Debian's docker-registry package (`cargo xtask deps`)"
    )]
    NotInstalled,
    /// A file or process operation failed.
    #[error("cannot {action}")]
    Io {
        /// What was being done.
        action: String,
        #[source]
        source: std::io::Error,
    },
    /// The htpasswd entry could not be hashed.
    #[error("cannot hash the htpasswd password")]
    Htpasswd(#[source] bcrypt::BcryptError),
    /// The registry did not answer in time.
    #[error("docker-registry on {addr} did not answer within {START_DEADLINE:?}; its log:\n{log}")]
    NotReady {
        /// Where it should listen.
        addr: SocketAddr,
        /// Its output.
        log: String,
    },
}

fn io_err(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> TestRegistryError {
    let action = action.into();
    move |source| TestRegistryError::Io { action, source }
}

/// How to start a [`TestRegistry`].
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Port on 127.0.0.1; a free one when `None`.
    pub port: Option<u16>,
    /// Require HTTP basic auth with this user and password.
    pub auth: Option<(String, String)>,
    /// Keep blobs here (survives the registry) instead of in the temp folder.
    pub storage: Option<PathBuf>,
    /// Log every request (see [`TestRegistry::requests`]).
    pub access_log: bool,
}

/// A running `docker-registry`.
pub struct TestRegistry {
    child: Option<Child>,
    addr: SocketAddr,
    dir: tempfile::TempDir,
    auth: Option<(String, String)>,
}

impl TestRegistry {
    /// Starts an anonymous registry on a free loopback port.
    pub fn start() -> Result<Self, TestRegistryError> {
        Self::start_with(RegistryOptions::default())
    }

    /// Starts a registry that requires `user`/`password` (htpasswd, bcrypt).
    pub fn start_with_auth(user: &str, password: &str) -> Result<Self, TestRegistryError> {
        Self::start_with(RegistryOptions {
            auth: Some((user.to_string(), password.to_string())),
            ..RegistryOptions::default()
        })
    }

    /// Starts a registry as `options` say.
    pub fn start_with(options: RegistryOptions) -> Result<Self, TestRegistryError> {
        if !Path::new(REGISTRY_BINARY).exists() {
            return Err(TestRegistryError::NotInstalled);
        }
        let dir = tempfile::Builder::new()
            .prefix("hull-registry")
            .tempdir()
            .map_err(io_err("create the registry's temporary folder"))?;
        let port = match options.port {
            Some(port) => port,
            None => free_port()?,
        };
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let storage = options
            .storage
            .clone()
            .unwrap_or_else(|| dir.path().join("storage"));
        fs::create_dir_all(&storage).map_err(io_err("create the registry storage"))?;
        let mut config = format!(
            "version: 0.1\n\
             log:\n  level: warn\n  accesslog:\n    disabled: {}\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: {addr}\n",
            !options.access_log,
            storage.display()
        );
        if let Some((user, password)) = &options.auth {
            let hash = bcrypt::hash(password, 5).map_err(TestRegistryError::Htpasswd)?;
            let htpasswd = dir.path().join("htpasswd");
            fs::write(&htpasswd, format!("{user}:{hash}\n")).map_err(io_err("write htpasswd"))?;
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: hull-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        fs::write(&config_path, config).map_err(io_err("write the registry config"))?;
        let log_path = dir.path().join("registry.log");
        let log = fs::File::create(&log_path).map_err(io_err("create the registry log"))?;
        let child = Command::new(REGISTRY_BINARY)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(io_err("open the registry log"))?)
            .stderr(log)
            .spawn()
            .map_err(io_err(format!("start {REGISTRY_BINARY}")))?;
        let mut registry = TestRegistry {
            child: Some(child),
            addr,
            dir,
            auth: options.auth,
        };
        registry.wait_ready(&log_path)?;
        Ok(registry)
    }

    fn wait_ready(&mut self, log_path: &Path) -> Result<(), TestRegistryError> {
        let deadline = Instant::now() + START_DEADLINE;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(_)) = child.try_wait()
            {
                break;
            }
            if probe_v2(self.addr).is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(TestRegistryError::NotReady {
            addr: self.addr,
            log: fs::read_to_string(log_path).unwrap_or_default(),
        })
    }

    /// `127.0.0.1:<port>`, the registry part of image references.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The credentials the registry requires, if any.
    pub fn auth(&self) -> Option<(&str, &str)> {
        self.auth.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// The registry's own folder (config, log, storage unless moved).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The registry's output so far (its access log lines when
    /// [`RegistryOptions::access_log`] is set).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// How many logged requests were `method` on a path containing `path_part`
    /// (needs [`RegistryOptions::access_log`]).
    pub fn requests(&self, method: &str, path_part: &str) -> usize {
        let needle = format!("\"{method} ");
        self.log()
            .lines()
            .filter(|line| line.contains(&needle) && line.contains(path_part))
            .count()
    }

    /// The pid of the registry process.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops the registry (by its pid) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port on 127.0.0.1 that nothing listens on right now.
pub fn free_port() -> Result<u16, TestRegistryError> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(io_err("find a free port"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(io_err("find a free port"))
}

/// The HTTP status of `GET /v2/` (200, or 401 behind auth), if anything answers.
fn probe_v2(addr: SocketAddr) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    stream
        .write_all(format!("GET /v2/ HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .ok()?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).ok()?;
    let text = String::from_utf8_lossy(&answer);
    text.split_whitespace().nth(1)?.parse().ok()
}
