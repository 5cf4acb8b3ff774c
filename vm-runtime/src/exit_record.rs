//! The exit record: one JSON file, written atomically when the VMM ends,
//! saying what ended the VM.
//!
//! Contract with hulld: the record exists once the VMM has exited on its
//! own terms, including when its seccomp filter stopped one of its threads.
//! A VMM process that is gone while its record is missing died without a
//! say (`kill -9`, OOM kill, crash of the VMM itself): hulld reports that
//! from the missing record and the dead pid.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::seccomp::ThreadKind;
use crate::vmm::timeline::{self, BootPhases, BootTimeline};

/// What ended the VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ExitReason {
    /// The guest rebooted (i8042 reset or a KVM reset event) with no panic on
    /// its console. hull guests leave by rebooting: this is a normal exit.
    GuestReboot,
    /// The guest kernel powered off (`reboot: Power down` on its console or a
    /// KVM shutdown event).
    GuestPoweroff,
    /// The guest kernel panicked (its panic banner was on the console) and
    /// then rebooted, triple-faulted or reported a crash event.
    GuestPanic { message: String },
    /// The guest triple-faulted without a panic on its console.
    TripleFault,
    /// hulld asked the VMM to stop over the control socket.
    Stopped { mode: StopMode },
    /// The VMM hit an error it could not recover from.
    VmmError { message: String },
    /// A VMM thread made a system call its seccomp filter refuses (a bug in
    /// the VMM, or a thread taken over by a guest): the VMM ended itself.
    SeccompViolation {
        /// The x86_64 system call number.
        syscall: i64,
        /// The role of the thread that made it.
        thread: ThreadKind,
    },
}

/// How a requested stop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopMode {
    /// The guest shut down by itself after being asked to.
    Graceful,
    /// The guest did not shut down in time; the VMM ended it.
    GracefulTimedOut,
    /// The VMM ended the guest at once.
    Forced,
}

impl ExitReason {
    /// Whether the guest ended as its software intended.
    pub fn is_clean(&self) -> bool {
        matches!(
            self,
            ExitReason::GuestReboot
                | ExitReason::GuestPoweroff
                | ExitReason::Stopped {
                    mode: StopMode::Graceful
                }
        )
    }
}

/// The file hulld reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExitRecord {
    pub reason: ExitReason,
    /// Process id of the VMM that wrote the record.
    pub pid: u32,
    /// Milliseconds since the Unix epoch when the record was written.
    pub unix_time_ms: u64,
    /// Milliseconds from VMM start to the end of the VM.
    pub vmm_uptime_ms: u64,
    /// Milliseconds the guest ran (since its first vCPU entry), if it started.
    pub guest_uptime_ms: Option<u64>,
    /// The guest's panic line, whenever one was seen (also for other reasons).
    pub panic_line: Option<String>,
    /// When each boot phase was reached, in microseconds since VMM start.
    #[serde(default)]
    pub boot_timeline_us: BootPhases,
}

/// Why an exit record could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ExitRecordError {
    #[error("cannot write the exit record {path}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the exit record {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("exit record {path} is not valid")]
    Parse {
        path: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Writes `data` to `path` atomically: a temporary file beside it, fsync,
/// rename, fsync of the directory.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let mut file = File::create(&tmp)?;
    file.write_all(data)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

impl ExitRecord {
    /// The record of a VM ending now for `reason`, with this process's pid
    /// and times and the boot phases `timeline` reached. Allocates nothing
    /// (the seccomp fault reporter relies on that).
    pub fn ending_now(
        reason: ExitReason,
        timeline: &BootTimeline,
        panic_line: Option<String>,
    ) -> Self {
        ExitRecord {
            reason,
            pid: std::process::id(),
            unix_time_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            vmm_uptime_ms: timeline::since_start_us() / 1000,
            guest_uptime_ms: timeline.guest_uptime_us().map(|us| us / 1000),
            panic_line,
            boot_timeline_us: timeline.snapshot(),
        }
    }

    /// Writes the record to `path` atomically.
    pub fn write(&self, path: &Path) -> Result<(), ExitRecordError> {
        let mut json = serde_json::to_vec_pretty(self).expect("exit record serializes");
        json.push(b'\n');
        write_atomic(path, &json).map_err(|source| ExitRecordError::Write {
            path: path.display().to_string(),
            source,
        })
    }

    /// Reads a record written by [`ExitRecord::write`].
    pub fn read(path: &Path) -> Result<Self, ExitRecordError> {
        let data = std::fs::read(path).map_err(|source| ExitRecordError::Read {
            path: path.display().to_string(),
            source,
        })?;
        serde_json::from_slice(&data).map_err(|source| ExitRecordError::Parse {
            path: path.display().to_string(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(reason: ExitReason) -> ExitRecord {
        ExitRecord {
            reason,
            pid: 42,
            unix_time_ms: 1,
            vmm_uptime_ms: 2,
            guest_uptime_ms: Some(1),
            panic_line: None,
            boot_timeline_us: BootPhases::default(),
        }
    }

    #[test]
    fn round_trips_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("exit.json");
        let r = record(ExitReason::GuestPanic {
            message: "Kernel panic - not syncing: x".into(),
        });
        r.write(&path).unwrap();
        assert_eq!(ExitRecord::read(&path).unwrap(), r);
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn json_names_the_reason() {
        let json = serde_json::to_string(&record(ExitReason::Stopped {
            mode: StopMode::GracefulTimedOut,
        }))
        .unwrap();
        assert!(
            json.contains(r#""reason":{"kind":"stopped","mode":"graceful_timed_out"}"#),
            "{json}"
        );
        let json = serde_json::to_string(&record(ExitReason::TripleFault)).unwrap();
        assert!(json.contains(r#"{"kind":"triple_fault"}"#), "{json}");
        let json = serde_json::to_string(&record(ExitReason::SeccompViolation {
            syscall: 41,
            thread: ThreadKind::Devices,
        }))
        .unwrap();
        assert!(
            json.contains(r#"{"kind":"seccomp_violation","syscall":41,"thread":"devices"}"#),
            "{json}"
        );
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("exit.json");
        std::fs::write(&path, r#"{"reason":{"kind":"guest_reboot"},"pid":1,"unix_time_ms":1,"vmm_uptime_ms":1,"guest_uptime_ms":null,"panic_line":null,"extra":1}"#).unwrap();
        assert!(matches!(
            ExitRecord::read(&path),
            Err(ExitRecordError::Parse { .. })
        ));
    }

    #[test]
    fn clean_reasons() {
        assert!(ExitReason::GuestReboot.is_clean());
        assert!(!ExitReason::TripleFault.is_clean());
        assert!(
            !ExitReason::Stopped {
                mode: StopMode::Forced
            }
            .is_clean()
        );
    }
}
