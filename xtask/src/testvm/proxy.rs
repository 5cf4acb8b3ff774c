//! Byte-stream proxies for the dev node's forwarded sockets.
//!
//! A forward from a host unix socket to a guest unix socket has two halves,
//! joined by one of QEMU's user-network TCP forwards:
//!
//! ```text
//! host:  client → HOST_PATH (unix) ─ proxy ─→ 127.0.0.1:HOST_PORT (tcp)
//! QEMU:  127.0.0.1:HOST_PORT ─ hostfwd ─→ 10.0.2.15:GUEST_PORT
//! guest: 10.0.2.15:GUEST_PORT (tcp) ─ proxy ─→ GUEST_PATH (unix) → server
//! ```
//!
//! Both halves are this module, run as `cargo xtask testvm-proxy` (the guest
//! runs the host's xtask binary, which it sees at the same path).
//!
//! The other direction, a guest reaching a TCP port on the host's loopback
//! (the dev node's registry), goes through a QEMU `guestfwd` whose command is
//! this proxy with `--stdio`:
//!
//! ```text
//! guest: client → 127.0.0.1:PORT ─ proxy ─→ 10.0.2.100:PORT
//! QEMU:  10.0.2.100:PORT ─ guestfwd cmd ─→ proxy --stdio ─→ host 127.0.0.1:PORT
//! ``` Every
//! accepted connection gets its own upstream connection and two copying
//! threads, so any number of clients (e.g. concurrent gRPC channels) work.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;

/// `cargo xtask testvm-proxy` (internal): one half of a forward.
#[derive(Args, Debug)]
pub struct ProxyArgs {
    /// The client is this process's stdin and stdout (one connection: QEMU
    /// runs one proxy per guest connection to a host port).
    #[arg(long, conflicts_with_all = ["listen_unix", "listen_tcp"])]
    stdio: bool,
    /// Listen on this unix socket path (replacing a stale socket file).
    #[arg(long, conflicts_with = "listen_tcp")]
    listen_unix: Option<PathBuf>,
    /// Listen on this TCP address.
    #[arg(long)]
    listen_tcp: Option<String>,
    /// Connect each client to this unix socket path.
    #[arg(long, conflicts_with = "connect_tcp")]
    connect_unix: Option<PathBuf>,
    /// Connect each client to this TCP address.
    #[arg(long)]
    connect_tcp: Option<String>,
}

/// A stream either side of a proxy can be.
trait Duplex: Read + Write + Send + 'static {
    fn try_clone_box(&self) -> std::io::Result<Box<dyn Duplex>>;
    fn shutdown_write(&self);
}

impl Duplex for TcpStream {
    fn try_clone_box(&self) -> std::io::Result<Box<dyn Duplex>> {
        Ok(Box::new(self.try_clone()?))
    }
    fn shutdown_write(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

impl Duplex for UnixStream {
    fn try_clone_box(&self) -> std::io::Result<Box<dyn Duplex>> {
        Ok(Box::new(self.try_clone()?))
    }
    fn shutdown_write(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

#[derive(Clone, Debug)]
enum Upstream {
    Unix(PathBuf),
    Tcp(String),
}

impl Upstream {
    fn connect(&self) -> std::io::Result<Box<dyn Duplex>> {
        Ok(match self {
            Upstream::Unix(path) => Box::new(UnixStream::connect(path)?),
            Upstream::Tcp(addr) => {
                let stream = TcpStream::connect(addr)?;
                stream.set_nodelay(true)?;
                Box::new(stream)
            }
        })
    }
}

/// Runs the proxy until killed.
pub fn run_cli(args: ProxyArgs) -> Result<()> {
    let upstream = match (&args.connect_unix, &args.connect_tcp) {
        (Some(path), None) => Upstream::Unix(path.clone()),
        (None, Some(addr)) => Upstream::Tcp(addr.clone()),
        _ => bail!("give exactly one of --connect-unix and --connect-tcp"),
    };
    if args.stdio {
        return proxy_stdio(&upstream);
    }
    match (&args.listen_unix, &args.listen_tcp) {
        (Some(path), None) => {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let _ = std::fs::remove_file(path);
            let listener = UnixListener::bind(path)
                .with_context(|| format!("cannot listen on {}", path.display()))?;
            eprintln!("testvm-proxy: {} -> {upstream:?}", path.display());
            for client in listener.incoming() {
                match client {
                    Ok(client) => spawn_pair(Box::new(client), upstream.clone()),
                    Err(err) => eprintln!("testvm-proxy: accept failed: {err}"),
                }
            }
        }
        (None, Some(addr)) => {
            let listener =
                TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
            eprintln!("testvm-proxy: {addr} -> {upstream:?}");
            for client in listener.incoming() {
                match client {
                    Ok(client) => {
                        let _ = client.set_nodelay(true);
                        spawn_pair(Box::new(client), upstream.clone());
                    }
                    Err(err) => eprintln!("testvm-proxy: accept failed: {err}"),
                }
            }
        }
        _ => bail!("give exactly one of --listen-unix and --listen-tcp"),
    }
    Ok(())
}

/// Copies stdin to `upstream` and `upstream` to stdout until both close.
fn proxy_stdio(upstream: &Upstream) -> Result<()> {
    let server = upstream
        .connect()
        .with_context(|| format!("cannot connect to {upstream:?}"))?;
    let mut server_writer = server.try_clone_box()?;
    let upward = std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut server_writer);
        server_writer.shutdown_write();
    });
    // Rust's stdout is line-buffered: flush every chunk, or binary
    // responses would wait for a newline.
    let mut server_reader = server;
    let mut stdout = std::io::stdout().lock();
    let mut buffer = [0u8; 64 * 1024];
    loop {
        match server_reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => {
                if stdout
                    .write_all(&buffer[..n])
                    .and_then(|()| stdout.flush())
                    .is_err()
                {
                    break;
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = upward.join();
    Ok(())
}

/// Connects `client` upstream (retrying briefly: the guest's server may still
/// be starting) and copies both ways until both sides close.
fn spawn_pair(client: Box<dyn Duplex>, upstream: Upstream) {
    std::thread::spawn(move || {
        let mut attempt = 0;
        let server = loop {
            match upstream.connect() {
                Ok(server) => break server,
                Err(err) if attempt < 20 => {
                    attempt += 1;
                    if attempt == 1 {
                        eprintln!("testvm-proxy: {upstream:?} not ready ({err}); retrying");
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err(err) => {
                    eprintln!("testvm-proxy: cannot connect to {upstream:?}: {err}");
                    return;
                }
            }
        };
        let (Ok(client_reader), Ok(server_reader)) =
            (client.try_clone_box(), server.try_clone_box())
        else {
            return;
        };
        let upward = std::thread::spawn(move || pump(client_reader, server));
        pump(server_reader, client);
        let _ = upward.join();
    });
}

fn pump(mut from: Box<dyn Duplex>, mut to: Box<dyn Duplex>) {
    let mut buffer = [0u8; 64 * 1024];
    loop {
        match from.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => {
                if let Err(err) = to.write_all(&buffer[..n]) {
                    eprintln!("testvm-proxy: write failed, closing: {err}");
                    break;
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => {
                eprintln!("testvm-proxy: read failed, closing: {err}");
                break;
            }
        }
    }
    to.shutdown_write();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_to_tcp_pair_carries_both_directions() {
        let dir = std::env::temp_dir().join(format!("hull-proxy-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for stream in server.incoming() {
                let mut stream = stream.unwrap();
                std::thread::spawn(move || {
                    let mut text = String::new();
                    stream.read_to_string(&mut text).unwrap();
                    stream.write_all(text.to_uppercase().as_bytes()).unwrap();
                });
            }
        });
        let path = dir.join("front.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let upstream = Upstream::Tcp(addr);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                spawn_pair(Box::new(client.unwrap()), upstream.clone());
            }
        });
        let clients: Vec<_> = (0..4)
            .map(|i| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let mut client = UnixStream::connect(&path).unwrap();
                    client.write_all(format!("hello {i}").as_bytes()).unwrap();
                    client.shutdown(Shutdown::Write).unwrap();
                    let mut reply = String::new();
                    client.read_to_string(&mut reply).unwrap();
                    assert_eq!(reply, format!("HELLO {i}"));
                })
            })
            .collect();
        for client in clients {
            client.join().unwrap();
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
