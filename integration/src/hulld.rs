//! Starting hulld for a test, and talking to it only through its CRI socket.
//!
//! Each [`Hulld`] runs the real `hulld` binary with its own configuration,
//! socket and state directory in a temporary folder, and is stopped (by its
//! pid) when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

/// How long hulld may take to start serving.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// The `hulld` binary of this workspace's build. `cargo xtask test` builds it
/// before the tests; `HULLD_BIN` overrides the path.
pub fn hulld_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("HULLD_BIN") {
        return PathBuf::from(path);
    }
    // Test executables live in target/<profile>/deps; binaries one level up.
    let exe = std::env::current_exe().expect("the test knows its own path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable is inside target/<profile>/deps");
    let path = profile_dir.join("hulld");
    assert!(
        path.exists(),
        "hulld is not built at {}; run `cargo build -p cri-server` (cargo xtask test does) or set HULLD_BIN",
        path.display()
    );
    path
}

/// A running hulld with its own temporary state.
pub struct Hulld {
    child: Option<Child>,
    dir: tempfile::TempDir,
    extra_config: String,
}

impl Hulld {
    /// Starts hulld with default settings in a fresh temporary directory.
    pub async fn start() -> Self {
        Self::start_with_config("").await
    }

    /// Starts hulld with `extra_config` (TOML, top-level keys and tables other
    /// than `[log]`) added to the test's base
    /// configuration (socket and state in the temporary directory).
    pub async fn start_with_config(extra_config: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("hulld-test")
            .tempdir()
            .expect("create a temporary directory");
        let mut hulld = Hulld {
            child: None,
            dir,
            extra_config: extra_config.to_string(),
        };
        hulld.write_config();
        hulld.spawn().await;
        hulld
    }

    /// The temporary directory holding config, socket, state and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn socket_path(&self) -> PathBuf {
        self.dir.path().join("hull.sock")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    /// hulld's own log so far (its stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("hulld.log")).unwrap_or_default()
    }

    /// The pid of the running hulld.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("hulld is running").id()
    }

    /// The CNI configuration directory of this hulld (empty at start: the
    /// pods get loopback only until a test writes a network there).
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.dir.path().join("net.d")
    }

    /// A CNI plugin directory of this hulld's own, looked up before the
    /// system's: tests put plugins of their own there.
    pub fn cni_bin_dir(&self) -> PathBuf {
        self.dir.path().join("cni-bin")
    }

    fn write_config(&self) {
        // Never the machine's own CNI config or namespace directory.
        let cni = if self.extra_config.contains("[cni]") {
            String::new()
        } else {
            format!(
                "[cni]\nconf_dir = {:?}\nnetns_dir = {:?}\nbin_dirs = [{:?}, \"/opt/cni/bin\", \"/usr/lib/cni\"]\n",
                self.cni_conf_dir(),
                self.dir.path().join("netns"),
                self.cni_bin_dir(),
            )
        };
        let config = format!(
            "socket_path = {:?}\nstate_dir = {:?}\n{}\n{cni}[log]\nlevel = \"debug\"\n",
            self.socket_path(),
            self.state_dir(),
            self.extra_config
        );
        std::fs::write(self.config_path(), config).expect("write hulld config");
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("hulld.log"))
            .expect("open hulld log");
        let child = Command::new(hulld_binary())
            .arg("--config")
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log fd"))
            .stderr(log)
            .spawn()
            .expect("start hulld");
        self.child = Some(child);
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().expect("wait") {
                panic!("hulld exited with {status} while starting:\n{}", self.log());
            }
            if std::os::unix::net::UnixStream::connect(self.socket_path()).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "hulld did not serve within {START_DEADLINE:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends `signal` to hulld and waits for it to exit; returns its status.
    pub fn stop_with(&mut self, signal: i32) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("hulld is running");
        // SAFETY: kill(2) with the pid of a child we spawned and have not yet
        // reaped, so the pid cannot have been reused by another process.
        let rc = unsafe { libc::kill(child.id() as i32, signal) };
        assert_eq!(rc, 0, "cannot signal hulld");
        child.wait().expect("wait for hulld")
    }

    /// SIGKILLs hulld (a crash), then starts it again on the same state.
    pub async fn crash_and_restart(&mut self) {
        self.stop_with(libc::SIGKILL);
        self.spawn().await;
    }

    /// Stops hulld with SIGTERM, then starts it again on the same state.
    pub async fn restart(&mut self) {
        let status = self.stop_with(libc::SIGTERM);
        assert!(
            status.success(),
            "hulld exited with {status} on SIGTERM:\n{}",
            self.log()
        );
        self.spawn().await;
    }

    async fn channel(&self) -> Channel {
        connect_unix(self.socket_path()).await
    }

    /// A RuntimeService client on hulld's socket.
    pub async fn runtime(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel().await)
    }

    /// An ImageService client on hulld's socket.
    pub async fn images(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(self.channel().await)
    }
}

impl Drop for Hulld {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `PullImage` of `image` with neither credentials nor a sandbox config.
pub fn pull_request(image: &str) -> k8s_cri::v1::PullImageRequest {
    k8s_cri::v1::PullImageRequest {
        image: Some(k8s_cri::v1::ImageSpec {
            image: image.to_owned(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A gRPC channel over a unix socket (the URI is a placeholder tonic needs).
pub async fn connect_unix(path: PathBuf) -> Channel {
    Endpoint::try_from("http://[::1]:50051")
        .expect("static URI")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .expect("connect to hulld's socket")
}
