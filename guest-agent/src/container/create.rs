//! `CreateContainer`: overlay rootfs, user resolution, libcontainer create.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hull_proto::limits::MAX_SPEC_JSON_BYTES;
use hull_proto::v1;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use oci_spec::runtime::Spec;

use super::{
    BUNDLES, CGROUP_ROOT, ContainerEntry, ContainerError, Containers, POD_CGROUP, Process,
    STATE_ROOT,
};
use crate::stats;
use crate::stdio::ProcessStdio;
use crate::storage;
use crate::user;

/// Receives the terminal master libcontainer sends over the console socket.
/// libcontainer has sent it before `build()` returns, so nothing here waits.
pub(super) fn receive_terminal(
    listener: &UnixListener,
    id: &str,
) -> Result<OwnedFd, ContainerError> {
    let io = |source| ContainerError::Io {
        action: "receive the terminal",
        id: id.to_owned(),
        source,
    };
    listener.set_nonblocking(true).map_err(io)?;
    let (stream, _) = listener.accept().map_err(io)?;
    crate::sys::receive_fd(stream.as_fd()).map_err(io)
}

/// Turns a libcontainer failure to `action` container `id` into ours.
pub(super) fn runtime_error(
    id: &str,
    action: &'static str,
) -> impl FnOnce(libcontainer::error::LibcontainerError) -> ContainerError {
    let id = id.to_owned();
    move |source| ContainerError::Runtime {
        action,
        id,
        source: Box::new(source),
    }
}

/// A libcontainer builder for container `id` under hull's state root, with
/// the process's stdio: with `terminal`, a console socket at
/// `console_socket` on which libcontainer will send the terminal master
/// (returned listener); otherwise pipes (stdin only when asked).
pub(super) fn stdio_builder(
    id: &str,
    action: &'static str,
    terminal: bool,
    stdin: bool,
    console_socket: &Path,
) -> Result<(ContainerBuilder, Option<UnixListener>, Option<ProcessStdio>), ContainerError> {
    let builder = ContainerBuilder::new(id.to_owned(), SyscallType::default())
        .with_root_path(STATE_ROOT)
        .map_err(runtime_error(id, action))?;
    if terminal {
        let _ = std::fs::remove_file(console_socket);
        let listener = UnixListener::bind(console_socket).map_err(|source| ContainerError::Io {
            action: "listen on the console socket",
            id: id.to_owned(),
            source,
        })?;
        Ok((
            builder.with_console_socket(Some(console_socket)),
            Some(listener),
            None,
        ))
    } else {
        let (stdio, child) = ProcessStdio::pipes(stdin)?;
        let builder = builder
            .with_stdin(child.stdin)
            .with_stdout(child.stdout)
            .with_stderr(child.stderr);
        Ok((builder, None, Some(stdio)))
    }
}

/// The container's cgroup, relative to the cgroup2 root.
fn cgroup_path(id: &str) -> PathBuf {
    Path::new(POD_CGROUP).join(id)
}

/// Fills in what only the agent knows: the rootfs path, the cgroup, and a
/// user resolved in the image.
fn adapt_spec(
    spec: &mut Spec,
    rootfs: &Path,
    id: &str,
    user_spec: &str,
) -> Result<(), ContainerError> {
    let mut root = spec.root().clone().unwrap_or_default();
    root.set_path(rootfs.to_path_buf());
    spec.set_root(Some(root));

    let mut linux = spec.linux().clone().unwrap_or_default();
    linux.set_cgroups_path(Some(cgroup_path(id)));
    spec.set_linux(Some(linux));

    if !user_spec.is_empty() {
        let resolved = user::resolve_in_rootfs(rootfs, user_spec)?;
        let mut process = spec
            .process()
            .clone()
            .ok_or_else(|| ContainerError::Invalid("the spec has no process".into()))?;
        let mut user = process.user().clone();
        let mut gids = user.additional_gids().clone().unwrap_or_default();
        gids.extend(resolved.additional_gids);
        gids.sort_unstable();
        gids.dedup();
        user.set_uid(resolved.uid);
        user.set_gid(resolved.gid);
        user.set_additional_gids(Some(gids));
        process.set_user(user);
        spec.set_process(Some(process));
    }
    Ok(())
}

impl Containers {
    /// Creates a container (see `CreateContainerRequest`). Returns its pid.
    pub fn create(&self, request: &v1::CreateContainerRequest) -> Result<u32, ContainerError> {
        let id = request.container_id.as_str();
        hull_proto::validate::container_id(id)
            .map_err(|e| ContainerError::Invalid(e.to_string()))?;
        if request.oci_spec_json.len() > MAX_SPEC_JSON_BYTES {
            return Err(ContainerError::Invalid(format!(
                "oci_spec_json is {} bytes, more than {MAX_SPEC_JSON_BYTES}",
                request.oci_spec_json.len()
            )));
        }
        if self.lock().contains_key(id) || Path::new(STATE_ROOT).join(id).exists() {
            return Err(ContainerError::AlreadyExists(id.to_owned()));
        }
        let mut spec: Spec = serde_json::from_slice(&request.oci_spec_json).map_err(|e| {
            ContainerError::Invalid(format!("oci_spec_json is not an OCI runtime spec: {e}"))
        })?;

        let bundle = Path::new(BUNDLES).join(id);
        let rootfs = bundle.join("rootfs");
        let io = |action| {
            move |source| ContainerError::Io {
                action,
                id: id.to_owned(),
                source,
            }
        };
        std::fs::create_dir_all(&rootfs).map_err(io("create the bundle"))?;
        std::fs::create_dir_all(STATE_ROOT).map_err(io("create the state directory"))?;
        storage::mount_overlay(id, &request.rootfs_lower_dirs, &rootfs)?;

        let result = self.create_in_bundle(request, &mut spec, &bundle, &rootfs);
        if result.is_err() {
            let _ = storage::remove_overlay(id, &rootfs);
            let _ = std::fs::remove_dir_all(&bundle);
            let _ = std::fs::remove_dir_all(Path::new(STATE_ROOT).join(id));
        }
        result
    }

    fn create_in_bundle(
        &self,
        request: &v1::CreateContainerRequest,
        spec: &mut Spec,
        bundle: &Path,
        rootfs: &Path,
    ) -> Result<u32, ContainerError> {
        let id = request.container_id.as_str();
        adapt_spec(spec, rootfs, id, &request.user)?;
        let terminal = spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false);
        spec.save(bundle.join("config.json"))
            .map_err(|e| ContainerError::Invalid(format!("cannot write config.json: {e}")))?;

        let (builder, console, pipes) = stdio_builder(
            id,
            "prepare",
            terminal,
            request.stdin,
            &bundle.join("console.sock"),
        )?;
        let container = builder
            .as_init(bundle)
            .with_systemd(false)
            .with_detach(true)
            .build()
            .map_err(runtime_error(id, "create"))?;
        let pid = container
            .pid()
            .ok_or_else(|| ContainerError::Invalid("libcontainer reported no pid".into()))?
            .as_raw();
        let cgroup_dir =
            Path::new(CGROUP_ROOT).join(cgroup_path(id).strip_prefix("/").unwrap_or(Path::new(id)));
        // Register the exit before anything can yield to the runtime.
        let exit = self.track_exit(id, "", pid, Some(cgroup_dir.clone()));
        let stdio = match (pipes, console) {
            (Some(stdio), _) => stdio,
            (None, Some(listener)) => {
                let master = receive_terminal(&listener, id);
                let _ = std::fs::remove_file(bundle.join("console.sock"));
                ProcessStdio::terminal(master?, request.stdin)?
            }
            (None, None) => unreachable!("either pipes or a console socket was set up"),
        };
        tracing::info!(container_id = %id, pid, stdio = %stdio.describe(), "container created");
        self.lock().insert(
            id.to_owned(),
            ContainerEntry {
                container,
                init: Arc::new(Process { pid, stdio, exit }),
                execs: HashMap::new(),
                bundle: bundle.to_path_buf(),
                rootfs: rootfs.to_path_buf(),
                cgroup_dir,
                created_at: stats::now_unix_nanos(),
                started_at: 0,
            },
        );
        Ok(u32::try_from(pid).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adapt_spec_sets_root_cgroup_and_resolved_user() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "app:x:1500:1500::/:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("etc/group"),
            "app:x:1500:\nextra:x:77:app\n",
        )
        .unwrap();
        let input = hull_proto::spec::ContainerSpecInput {
            args: vec!["/bin/true".into()],
            supplemental_groups: vec![5],
            ..Default::default()
        };
        let mut spec = hull_proto::spec::build(&input).unwrap();
        adapt_spec(&mut spec, dir.path(), "c1", "app").unwrap();
        assert_eq!(spec.root().as_ref().unwrap().path(), dir.path());
        assert_eq!(
            spec.linux().as_ref().unwrap().cgroups_path().as_deref(),
            Some(Path::new("/pod/c1"))
        );
        let user = spec.process().as_ref().unwrap().user();
        assert_eq!((user.uid(), user.gid()), (1500, 1500));
        assert_eq!(user.additional_gids().as_deref(), Some(&[5, 77][..]));
        assert!(matches!(
            adapt_spec(&mut spec, dir.path(), "c1", "nobody-here"),
            Err(ContainerError::User(_))
        ));
    }
}
