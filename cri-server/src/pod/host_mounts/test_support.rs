//! Test doubles for host_mounts: a fake agent that applies the file
//! requests to a temporary directory standing for the guest's
//! `/run/hull/files` (and records them), the kubelet's atomic writer, and
//! CRI mounts.

use std::collections::BTreeMap;
use std::future::Future;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use hull_proto::spec::guest_paths;
use hull_proto::v1;
use k8s_cri::v1::Mount;
use tempfile::TempDir;
use tonic::Status;

use super::guest::GuestFiles;

/// A CRI mount with private propagation.
pub fn cri_mount(container_path: &str, host_path: &Path, readonly: bool) -> Mount {
    Mount {
        container_path: container_path.to_owned(),
        host_path: host_path.display().to_string(),
        readonly,
        ..Default::default()
    }
}

/// A projected/secret/configmap volume directory written the way the
/// kubelet's atomic writer writes it: the data in a new timestamped
/// directory, a `key -> ..data/key` link per new key, `..data` swapped to
/// the new directory through `..data_tmp`, then the old keys' links and the
/// old directory removed.
pub struct KubeletVolume {
    pub dir: PathBuf,
    version: Mutex<u32>,
}

impl KubeletVolume {
    pub fn new(dir: PathBuf) -> Self {
        std::fs::create_dir_all(&dir).unwrap();
        Self {
            dir,
            version: Mutex::new(0),
        }
    }

    /// Writes a new version; returns its timestamped directory's name.
    pub fn write(&self, payload: &[(&str, &[u8])]) -> String {
        let version = {
            let mut version = self.version.lock().unwrap();
            *version += 1;
            *version
        };
        let ts = format!("..2026_11_22_10_00_{version:02}.{}", 123_456_789 + version);
        let ts_dir = self.dir.join(&ts);
        std::fs::create_dir(&ts_dir).unwrap();
        std::fs::set_permissions(&ts_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        for (key, data) in payload {
            let path = ts_dir.join(key);
            std::fs::write(&path, data).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let data_link = self.dir.join("..data");
        let old = std::fs::read_link(&data_link).ok();
        for (key, _) in payload {
            let visible = self.dir.join(key);
            if std::fs::symlink_metadata(&visible).is_err() {
                symlink(format!("..data/{key}"), &visible).unwrap();
            }
        }
        let tmp = self.dir.join("..data_tmp");
        symlink(&ts, &tmp).unwrap();
        std::fs::rename(&tmp, &data_link).unwrap();
        if let Some(old) = old {
            for entry in std::fs::read_dir(self.dir.join(&old)).unwrap() {
                let name = entry.unwrap().file_name();
                if !payload.iter().any(|(key, _)| name == *key) {
                    std::fs::remove_file(self.dir.join(&name)).unwrap();
                }
            }
            std::fs::remove_dir_all(self.dir.join(old)).unwrap();
        }
        ts
    }
}

/// A request the fake agent received.
#[derive(Clone, Debug, PartialEq)]
pub enum Recorded {
    Copy(v1::CopyFileRequest),
    Read(v1::ReadFileRequest),
    Remove(String),
}

#[derive(Default)]
pub struct State {
    requests: Vec<Recorded>,
    /// Copies that succeed before `fail_copies` applies.
    copies_before_failing: usize,
    fail_copies: Option<Status>,
    fail_reads: Option<Status>,
    fail_removes: Option<Status>,
    read_reply: Option<v1::ReadFileResponse>,
    /// Links inside the guest tree that led nowhere after some request.
    dangling: Vec<String>,
}

/// A fake agent: applies `CopyFile`/`RemoveFile` to a temporary directory
/// that stands for `/run/hull/files` and answers `ReadFile` from it.
/// Clones share the directory and the record.
#[derive(Clone)]
pub struct FakeGuest {
    root: Arc<TempDir>,
    state: Arc<Mutex<State>>,
}

impl FakeGuest {
    pub fn new() -> Self {
        Self {
            root: Arc::new(tempfile::tempdir().unwrap()),
            state: Arc::default(),
        }
    }

    /// The local path of a guest path under `/run/hull/files`.
    pub fn local(&self, guest: &str) -> PathBuf {
        let rest = guest
            .strip_prefix(guest_paths::FILES)
            .and_then(|rest| rest.strip_prefix('/'))
            .unwrap_or_else(|| panic!("{guest} is not under {}", guest_paths::FILES));
        self.root.path().join(rest)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Requests as "+path", "+path -> target" (links) and "-path".
    pub fn summary(&self) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter_map(|r| match r {
                Recorded::Copy(c) if c.kind == v1::FileKind::Symlink as i32 => {
                    Some(format!("+{} -> {}", c.path, c.symlink_target))
                }
                Recorded::Copy(c) => Some(format!("+{}", c.path)),
                Recorded::Remove(path) => Some(format!("-{path}")),
                Recorded::Read(_) => None,
            })
            .collect()
    }

    pub fn clear_requests(&self) {
        self.state.lock().unwrap().requests.clear();
    }

    pub fn dangling_links_seen(&self) -> Vec<String> {
        self.state.lock().unwrap().dangling.clone()
    }

    /// How many handles share this fake (a running sync task holds one).
    pub fn holders(&self) -> usize {
        Arc::strong_count(&self.state)
    }

    /// After `n` more successful copies, every copy fails with `status`.
    pub fn fail_copies_after(&self, n: usize, status: Status) {
        let mut state = self.state.lock().unwrap();
        state.copies_before_failing = n;
        state.fail_copies = Some(status);
    }

    pub fn fail_copies_with(&self, status: Status) {
        self.fail_copies_after(0, status);
    }

    pub fn stop_failing(&self) {
        let mut state = self.state.lock().unwrap();
        state.fail_copies = None;
        state.fail_reads = None;
        state.fail_removes = None;
    }

    pub fn fail_removes_with(&self, status: Status) {
        self.state.lock().unwrap().fail_removes = Some(status);
    }

    pub fn fail_reads_with(&self, status: Status) {
        self.state.lock().unwrap().fail_reads = Some(status);
    }

    /// Answers every `ReadFile` with `reply`, whatever the file holds.
    pub fn reply_to_reads_with(&self, reply: v1::ReadFileResponse) {
        self.state.lock().unwrap().read_reply = Some(reply);
    }

    pub fn read_guest(&self, guest: &str) -> Vec<u8> {
        std::fs::read(self.local(guest)).unwrap_or_else(|e| panic!("{guest}: {e}"))
    }

    pub fn try_read_guest(&self, guest: &str) -> Option<Vec<u8>> {
        std::fs::read(self.local(guest)).ok()
    }

    /// What a container writing to its bind mount does.
    pub fn write_guest(&self, guest: &str, data: &[u8]) {
        std::fs::write(self.local(guest), data).unwrap();
    }

    pub fn remove_guest(&self, guest: &str) {
        std::fs::remove_file(self.local(guest)).unwrap();
    }

    pub fn exists(&self, guest: &str) -> bool {
        std::fs::symlink_metadata(self.local(guest)).is_ok()
    }

    /// Every entry under a guest directory, by relative path.
    pub fn local_entries(&self, guest: &str) -> Vec<String> {
        describe(&self.local(guest))
            .into_keys()
            .filter(|k| !k.is_empty())
            .collect()
    }

    /// Asserts the guest copy at `guest` is the host tree at `host`: the
    /// same entries, kinds, modes, file contents and link targets.
    pub fn assert_mirrors(&self, host: &Path, guest: &str) {
        let host = describe(host);
        let copy = describe(&self.local(guest));
        assert_eq!(
            copy, host,
            "the guest copy {guest} differs from the host tree"
        );
    }

    fn check_links(&self, state: &mut State) {
        for (rel, what) in describe(self.root.path()) {
            if what.starts_with("->") && std::fs::metadata(self.root.path().join(&rel)).is_err() {
                state.dangling.push(rel);
            }
        }
    }

    fn apply_copy(&self, request: &v1::CopyFileRequest) -> std::io::Result<()> {
        let path = self.local(&request.path);
        let parent = path.parent().unwrap();
        std::fs::create_dir_all(parent)?;
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let tmp = parent.join(format!(".{name}.fake-tmp"));
        let mode = std::fs::Permissions::from_mode(request.mode & 0o7777);
        match v1::FileKind::try_from(request.kind).unwrap() {
            v1::FileKind::Directory => {
                std::fs::create_dir_all(&path)?;
                std::fs::set_permissions(&path, mode)
            }
            v1::FileKind::Symlink => {
                let _ = std::fs::remove_file(&tmp);
                symlink(&request.symlink_target, &tmp)?;
                std::fs::rename(&tmp, &path)
            }
            _ => {
                std::fs::write(&tmp, &request.data)?;
                std::fs::set_permissions(&tmp, mode)?;
                std::fs::rename(&tmp, &path)
            }
        }
    }

    fn read(&self, request: &v1::ReadFileRequest) -> Result<v1::ReadFileResponse, Status> {
        let path = self.local(&request.path);
        let meta =
            std::fs::symlink_metadata(&path).map_err(|_| Status::not_found("no such file"))?;
        if !meta.is_file() {
            return Err(Status::failed_precondition("not a regular file"));
        }
        let data = std::fs::read(&path).map_err(|e| Status::internal(e.to_string()))?;
        let start = (request.offset as usize).min(data.len());
        let end = (start + request.max_bytes as usize).min(data.len());
        Ok(v1::ReadFileResponse {
            data: data[start..end].to_vec(),
            size: data.len() as u64,
            truncated: end < data.len(),
        })
    }

    fn remove(&self, guest: &str) -> std::io::Result<()> {
        let path = self.local(guest);
        match std::fs::symlink_metadata(&path) {
            Err(_) => Ok(()),
            Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(&path),
            Ok(_) => std::fs::remove_file(&path),
        }
    }
}

/// A tree described entry by entry, by path relative to `root` ("" for the
/// root): "dir 755", "file 644 <content>", "-> target".
fn describe(root: &Path) -> BTreeMap<String, String> {
    fn visit(path: &Path, rel: String, out: &mut BTreeMap<String, String>) {
        let meta = std::fs::symlink_metadata(path).unwrap();
        let mode = meta.permissions().mode() & 0o7777;
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(path).unwrap();
            out.insert(rel, format!("-> {}", target.display()));
        } else if meta.is_dir() {
            out.insert(rel.clone(), format!("dir {mode:o}"));
            let mut names: Vec<_> = std::fs::read_dir(path)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            names.sort();
            for name in names {
                let child = if rel.is_empty() {
                    name.to_string_lossy().into_owned()
                } else {
                    format!("{rel}/{}", name.to_string_lossy())
                };
                visit(&path.join(&name), child, out);
            }
        } else {
            let data = std::fs::read(path).unwrap();
            out.insert(
                rel,
                format!("file {mode:o} {}", String::from_utf8_lossy(&data)),
            );
        }
    }
    let mut out = BTreeMap::new();
    visit(root, String::new(), &mut out);
    out
}

impl GuestFiles for FakeGuest {
    fn copy_file(
        &mut self,
        request: v1::CopyFileRequest,
    ) -> impl Future<Output = Result<(), Status>> + Send {
        let result = (|| {
            let mut state = self.state.lock().unwrap();
            state.requests.push(Recorded::Copy(request.clone()));
            if state.fail_copies.is_some() {
                if state.copies_before_failing == 0 {
                    return Err(state.fail_copies.clone().unwrap());
                }
                state.copies_before_failing -= 1;
            }
            self.apply_copy(&request)
                .map_err(|e| Status::internal(e.to_string()))?;
            self.check_links(&mut state);
            Ok(())
        })();
        std::future::ready(result)
    }

    fn read_file(
        &mut self,
        request: v1::ReadFileRequest,
    ) -> impl Future<Output = Result<v1::ReadFileResponse, Status>> + Send {
        let result = (|| {
            let mut state = self.state.lock().unwrap();
            state.requests.push(Recorded::Read(request.clone()));
            if let Some(status) = &state.fail_reads {
                return Err(status.clone());
            }
            if let Some(reply) = &state.read_reply {
                return Ok(reply.clone());
            }
            self.read(&request)
        })();
        std::future::ready(result)
    }

    fn remove_file(
        &mut self,
        request: v1::RemoveFileRequest,
    ) -> impl Future<Output = Result<(), Status>> + Send {
        let result = (|| {
            let mut state = self.state.lock().unwrap();
            state.requests.push(Recorded::Remove(request.path.clone()));
            if let Some(status) = &state.fail_removes {
                return Err(status.clone());
            }
            self.remove(&request.path)
                .map_err(|e| Status::internal(e.to_string()))?;
            self.check_links(&mut state);
            Ok(())
        })();
        std::future::ready(result)
    }
}
