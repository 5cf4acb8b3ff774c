//! Writing writable single-file mounts back to the host after the container
//! exited. The one that matters is the termination-message file: the
//! kubelet reads the last 4096 bytes of the host file that ContainerStatus
//! names for the container's `terminationMessagePath`, and the container
//! wrote only its copy in the guest.

use std::io::{Read, Seek};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};

use hull_proto::client::AgentClient;
use hull_proto::limits::MAX_READ_FILE_BYTES;
use hull_proto::{v1, validate};
use tonic::Code;

use super::guest::{GuestFiles, Location, with_timeout};
use super::scan::Entry;
use super::{Bytes, HostMountError, MAX_WRITE_BACK_BYTES, MountPlan, UpdatePolicy};

/// Reads of one file a write-back may take: enough for
/// [`MAX_WRITE_BACK_BYTES`] in full chunks, so a guest that answers with
/// tiny chunks cannot keep hulld asking.
const MAX_READS: u64 = MAX_WRITE_BACK_BYTES / MAX_READ_FILE_BYTES as u64 + 2;

/// Copies each writable single-file mount of `plan` (the termination-message
/// file, `/etc/hosts`) from the guest back to its host file, in place (the
/// file is truncated, then written; it keeps its inode, owner and mode). A
/// guest file over [`MAX_WRITE_BACK_BYTES`] is written back as its last
/// that many bytes, which still holds everything the kubelet reads. A copy
/// missing from the guest, a host file already equal to it, and a host file
/// that changed since the copy was made (another container wrote the pod's
/// shared `/etc/hosts` back first) are left alone. Every mount is tried; the first error is returned. Returns how
/// many host files were written.
pub async fn write_back(
    agent: &mut AgentClient,
    plan: &MountPlan,
) -> Result<usize, HostMountError> {
    write_back_with(agent, plan).await
}

pub async fn write_back_with<G: GuestFiles>(
    files: &mut G,
    plan: &MountPlan,
) -> Result<usize, HostMountError> {
    let mut written = 0;
    let mut first_error = None;
    for mount in &plan.mounts {
        if mount.policy != UpdatePolicy::WrittenBackOnExit {
            continue;
        }
        let location = Location {
            host_path: mount.host_path.clone(),
            source: mount.source.clone(),
            guest_path: mount.guest_path.clone(),
        };
        let result = match read_guest_file(files, &location).await {
            Ok(Some(data)) => {
                let at = location.clone();
                let copied = mount.snapshot.get("").cloned();
                tokio::task::spawn_blocking(move || write_host_file(&at, copied.as_ref(), &data))
                    .await
                    .expect("writing a host file does not panic")
            }
            Ok(None) => Ok(false),
            Err(err) => Err(err),
        };
        match result {
            Ok(true) => {
                written += 1;
                tracing::debug!(container_id = %plan.container_id, host_path = %mount.host_path.display(),
                    "guest copy written back to the host");
            }
            Ok(false) => {}
            Err(err) => {
                tracing::warn!(container_id = %plan.container_id, host_path = %mount.host_path.display(),
                    error = %err, "cannot write a container's file back to the host");
                first_error.get_or_insert(err);
            }
        }
    }
    match first_error {
        Some(err) => Err(err),
        None => Ok(written),
    }
}

/// One `ReadFile` of the copy, checked; `None` when the guest has no copy.
async fn read_chunk<G: GuestFiles>(
    files: &mut G,
    location: &Location,
    offset: u64,
) -> Result<Option<v1::ReadFileResponse>, HostMountError> {
    let request = v1::ReadFileRequest {
        path: location.guest(""),
        offset,
        max_bytes: MAX_READ_FILE_BYTES as u32,
    };
    let reply = match with_timeout(files.read_file(request.clone())).await {
        Ok(reply) => reply,
        Err(status) if status.code() == Code::NotFound => return Ok(None),
        Err(status) => return Err(location.agent_error("read", "")(status)),
    };
    validate::read_file_reply(&request, &reply).map_err(|source| HostMountError::GuestReply {
        guest_path: request.path,
        source,
    })?;
    Ok(Some(reply))
}

/// The guest copy, or its last [`MAX_WRITE_BACK_BYTES`].
async fn read_guest_file<G: GuestFiles>(
    files: &mut G,
    location: &Location,
) -> Result<Option<Vec<u8>>, HostMountError> {
    let Some(first) = read_chunk(files, location, 0).await? else {
        tracing::debug!(guest_path = %location.guest_path, "no guest copy to write back");
        return Ok(None);
    };
    if !first.truncated {
        return Ok(Some(first.data));
    }
    let size = first.size;
    let start = size.saturating_sub(MAX_WRITE_BACK_BYTES);
    if start > 0 {
        tracing::warn!(
            guest_path = %location.guest_path,
            host_path = %location.host_path.display(),
            size = %Bytes(size),
            "the container's copy is larger than hull writes back; writing back its last {}",
            Bytes(MAX_WRITE_BACK_BYTES)
        );
    }
    let mut data = if start == 0 { first.data } else { Vec::new() };
    let mut offset = start + data.len() as u64;
    let mut reads = 1;
    while offset < size && (data.len() as u64) < MAX_WRITE_BACK_BYTES && reads < MAX_READS {
        reads += 1;
        let Some(chunk) = read_chunk(files, location, offset).await? else {
            break;
        };
        if chunk.data.is_empty() {
            break;
        }
        offset += chunk.data.len() as u64;
        data.extend_from_slice(&chunk.data);
        if !chunk.truncated {
            break;
        }
    }
    data.truncate(MAX_WRITE_BACK_BYTES as usize);
    Ok(Some(data))
}

/// Writes `data` into the host file in place, unless it already holds it,
/// or it changed since it was copied into the guest (`copied`): then
/// another writer — a sibling container's write-back of the pod's shared
/// `/etc/hosts` — got there first, and the guest copy may be the older of
/// the two. The file is not created (the kubelet made it; if it is gone, so
/// is the pod) and not followed if it became a symlink. Blocking. Returns
/// whether it was written.
fn write_host_file(
    location: &Location,
    copied: Option<&Entry>,
    data: &[u8],
) -> Result<bool, HostMountError> {
    let host_path = location.host_path.clone();
    let error = |action: &'static str| {
        let host_path = host_path.clone();
        move |source| HostMountError::Host {
            action,
            host_path,
            source,
        }
    };
    let mut file = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&location.source)
    {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::debug!(host_path = %host_path.display(), "host file is gone; nothing to write back");
            return Ok(false);
        }
        Err(e) => return Err(error("open")(e)),
    };
    let meta = file.metadata().map_err(error("stat"))?;
    if !meta.is_file() {
        return Err(error("write back to")(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "it is not a regular file any more",
        )));
    }
    let mut current = Vec::with_capacity(data.len());
    (&mut file)
        .take(data.len() as u64 + 1)
        .read_to_end(&mut current)
        .map_err(error("read"))?;
    if current == data {
        return Ok(false);
    }
    let unchanged = copied.is_some_and(|copied| {
        (meta.dev(), meta.ino(), meta.size()) == (copied.dev, copied.ino, copied.size)
            && (
                meta.mtime(),
                meta.mtime_nsec(),
                meta.ctime(),
                meta.ctime_nsec(),
            ) == (
                (copied.mtime_ns / 1_000_000_000) as i64,
                (copied.mtime_ns % 1_000_000_000) as i64,
                (copied.ctime_ns / 1_000_000_000) as i64,
                (copied.ctime_ns % 1_000_000_000) as i64,
            )
    });
    if !unchanged {
        tracing::warn!(
            host_path = %host_path.display(),
            "host file changed since it was copied into the pod VM; not overwriting it with \
             the container's copy"
        );
        return Ok(false);
    }
    file.rewind().map_err(error("write back to"))?;
    file.set_len(0).map_err(error("truncate"))?;
    file.write_all_at(data, 0).map_err(error("write back to"))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use tonic::Status;

    use super::super::guest::copy_in_with;
    use super::super::test_support::{FakeGuest, Recorded, cri_mount};
    use super::super::{MountPlan, plan};
    use super::*;

    const LOG: &str = "/run/hull/files/c1/0-termination-log";

    async fn termination_log(host: &Path) -> (std::path::PathBuf, MountPlan, FakeGuest) {
        let file = host.join("termination-log");
        std::fs::write(&file, "").unwrap();
        let plan = plan("c1", &[cri_mount("/dev/termination-log", &file, false)]).unwrap();
        let mut guest = FakeGuest::new();
        copy_in_with(&mut guest, &plan).await.unwrap();
        (file, plan, guest)
    }

    #[tokio::test]
    async fn the_termination_message_reaches_the_host_file() {
        let host = tempfile::tempdir().unwrap();
        let (file, plan, mut guest) = termination_log(host.path()).await;
        let inode = std::fs::metadata(&file).unwrap();
        guest.write_guest(LOG, b"panic: out of cheese\n");
        assert_eq!(write_back_with(&mut guest, &plan).await.unwrap(), 1);
        assert_eq!(std::fs::read(&file).unwrap(), b"panic: out of cheese\n");
        // In place: the kubelet's file, not a new one.
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&file).unwrap().ino(), inode.ino());
        // Unchanged since: nothing written.
        assert_eq!(write_back_with(&mut guest, &plan).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_shorter_copy_replaces_the_host_file_whole() {
        let host = tempfile::tempdir().unwrap();
        let file = host.path().join("hosts");
        std::fs::write(&file, "127.0.0.1 localhost\n10.0.0.5 web-0\n").unwrap();
        let plan = plan("c1", &[cri_mount("/etc/hosts", &file, false)]).unwrap();
        let mut guest = FakeGuest::new();
        copy_in_with(&mut guest, &plan).await.unwrap();
        guest.write_guest("/run/hull/files/c1/0-hosts", b"127.0.0.1 localhost\n");
        assert_eq!(write_back_with(&mut guest, &plan).await.unwrap(), 1);
        assert_eq!(std::fs::read(&file).unwrap(), b"127.0.0.1 localhost\n");
    }

    #[tokio::test]
    async fn a_host_file_changed_by_someone_else_is_not_overwritten() {
        let host = tempfile::tempdir().unwrap();
        let file = host.path().join("etc-hosts");
        std::fs::write(&file, "127.0.0.1 localhost\n").unwrap();
        let mounts = [cri_mount("/etc/hosts", &file, false)];
        let (first, second) = (plan("c1", &mounts).unwrap(), plan("c2", &mounts).unwrap());
        let mut guest = FakeGuest::new();
        copy_in_with(&mut guest, &first).await.unwrap();
        copy_in_with(&mut guest, &second).await.unwrap();
        // c1 edits its /etc/hosts and exits first.
        guest.write_guest(
            "/run/hull/files/c1/0-etc-hosts",
            b"127.0.0.1 localhost\n1.2.3.4 db\n",
        );
        assert_eq!(write_back_with(&mut guest, &first).await.unwrap(), 1);
        // c2 never touched its copy: its older content does not undo c1's.
        assert_eq!(write_back_with(&mut guest, &second).await.unwrap(), 0);
        assert_eq!(
            std::fs::read(&file).unwrap(),
            b"127.0.0.1 localhost\n1.2.3.4 db\n"
        );
    }

    #[tokio::test]
    async fn files_over_one_read_come_in_chunks_and_huge_ones_keep_their_tail() {
        let host = tempfile::tempdir().unwrap();
        let (file, plan, mut guest) = termination_log(host.path()).await;
        let pattern = |n: usize| (0..n).map(|i| (i % 251) as u8).collect::<Vec<u8>>();

        let medium = pattern(MAX_READ_FILE_BYTES * 2 + 100);
        guest.write_guest(LOG, &medium);
        write_back_with(&mut guest, &plan).await.unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), medium);

        // Another container instance, with its own file.
        let host = tempfile::tempdir().unwrap();
        let (file, plan, mut guest) = termination_log(host.path()).await;
        let huge = pattern(MAX_WRITE_BACK_BYTES as usize + 5000);
        guest.write_guest(LOG, &huge);
        guest.clear_requests();
        write_back_with(&mut guest, &plan).await.unwrap();
        let written = std::fs::read(&file).unwrap();
        assert_eq!(written.len() as u64, MAX_WRITE_BACK_BYTES);
        assert_eq!(written[..], huge[5000..]);
        // What the kubelet reads: the last 4096 bytes, the same as in the guest.
        assert_eq!(written[written.len() - 4096..], huge[huge.len() - 4096..]);
        let reads = guest
            .requests()
            .iter()
            .filter(|r| matches!(r, Recorded::Read(_)))
            .count() as u64;
        assert!(reads <= MAX_READS, "{reads} reads");
    }

    #[tokio::test]
    async fn a_missing_copy_or_host_file_is_not_an_error() {
        let host = tempfile::tempdir().unwrap();
        let (file, plan, mut guest) = termination_log(host.path()).await;
        guest.remove_guest(LOG);
        assert_eq!(write_back_with(&mut guest, &plan).await.unwrap(), 0);
        guest.write_guest(LOG, b"late");
        std::fs::remove_file(&file).unwrap();
        assert_eq!(write_back_with(&mut guest, &plan).await.unwrap(), 0);
        assert!(!file.exists(), "the host file is not created");
    }

    #[tokio::test]
    async fn a_lying_guest_is_not_believed() {
        let host = tempfile::tempdir().unwrap();
        let (file, plan, mut guest) = termination_log(host.path()).await;
        std::fs::write(&file, "kept").unwrap();
        guest.reply_to_reads_with(v1::ReadFileResponse {
            data: vec![b'x'; MAX_READ_FILE_BYTES + 1],
            size: MAX_READ_FILE_BYTES as u64 + 1,
            truncated: false,
        });
        let err = write_back_with(&mut guest, &plan).await.unwrap_err();
        assert!(matches!(err, HostMountError::GuestReply { .. }), "{err}");
        assert_eq!(std::fs::read(&file).unwrap(), b"kept");

        // A guest that keeps saying "more" in one-byte chunks is cut off.
        guest.reply_to_reads_with(v1::ReadFileResponse {
            data: b"y".to_vec(),
            size: u64::MAX / 2,
            truncated: true,
        });
        guest.clear_requests();
        let _ = write_back_with(&mut guest, &plan).await;
        assert!(guest.requests().len() as u64 <= MAX_READS);
    }

    #[tokio::test]
    async fn only_writable_single_files_are_written_back() {
        let host = tempfile::tempdir().unwrap();
        let file = host.path().join("cm-file");
        std::fs::write(&file, "config").unwrap();
        let dir = host.path().join("data");
        std::fs::create_dir(&dir).unwrap();
        let plan = plan(
            "c1",
            &[
                cri_mount("/etc/app.conf", &file, true),
                cri_mount("/data", &dir, false),
            ],
        )
        .unwrap();
        let mut guest = FakeGuest::new();
        copy_in_with(&mut guest, &plan).await.unwrap();
        guest.clear_requests();
        guest.write_guest("/run/hull/files/c1/0-cm-file", b"changed in the guest");
        assert_eq!(write_back_with(&mut guest, &plan).await.unwrap(), 0);
        assert!(guest.requests().is_empty());
        assert_eq!(std::fs::read(&file).unwrap(), b"config");
    }

    #[tokio::test]
    async fn an_agent_failure_names_the_copy() {
        let host = tempfile::tempdir().unwrap();
        let (file, plan, mut guest) = termination_log(host.path()).await;
        guest.fail_reads_with(Status::failed_precondition("is a symlink"));
        let err = write_back_with(&mut guest, &plan).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "the agent could not read {LOG} (the copy of host path {})",
                file.display()
            )
        );
    }
}
