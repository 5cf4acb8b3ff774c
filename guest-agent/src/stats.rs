//! Resource usage from cgroup v2 files. Plain parsers, then one function
//! that reads a cgroup directory.

use std::path::Path;

use hull_proto::v1;

/// Reading a cgroup's files failed.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Value of `key` in a flat-keyed file (`cpu.stat`, `memory.stat`,
/// `memory.events`): lines of `key value`.
pub fn flat_keyed(content: &str, key: &str) -> Option<u64> {
    content.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// A single-value file (`memory.current`, `pids.current`, `memory.max`):
/// `max` reads as `None`.
pub fn single_value(content: &str) -> Option<u64> {
    content.trim().parse().ok()
}

/// `io.stat` summed over devices: lines of
/// `MAJ:MIN rbytes=N wbytes=N rios=N wios=N dbytes=N dios=N`.
pub fn io_stat(content: &str) -> v1::IoStats {
    let mut io = v1::IoStats::default();
    for line in content.lines() {
        for field in line.split_ascii_whitespace().skip(1) {
            let Some((key, value)) = field.split_once('=') else {
                continue;
            };
            let Ok(value) = value.parse::<u64>() else {
                continue;
            };
            let slot = match key {
                "rbytes" => &mut io.read_bytes,
                "wbytes" => &mut io.write_bytes,
                "rios" => &mut io.read_ops,
                "wios" => &mut io.write_ops,
                _ => continue,
            };
            *slot = slot.saturating_add(value);
        }
    }
    io
}

/// `memory.current - inactive_file`, floored at 0: the kubelet's working
/// set.
pub fn working_set(current: u64, memory_stat: &str) -> u64 {
    current.saturating_sub(flat_keyed(memory_stat, "inactive_file").unwrap_or(0))
}

/// Nanoseconds since the Unix epoch, now.
pub fn now_unix_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// Reads a file of the cgroup; a missing file (controller not enabled) reads
/// as empty.
fn read_optional(dir: &Path, name: &str) -> Result<String, StatsError> {
    let path = dir.join(name);
    match std::fs::read_to_string(&path) {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(source) => Err(StatsError::Read {
            path: path.display().to_string(),
            source,
        }),
    }
}

/// `memory.events` `oom_kill` of a cgroup directory (0 when unreadable).
pub fn oom_kills(cgroup_dir: &Path) -> u64 {
    read_optional(cgroup_dir, "memory.events")
        .ok()
        .and_then(|s| flat_keyed(&s, "oom_kill"))
        .unwrap_or(0)
}

/// Reads every statistic of a cgroup directory.
pub fn read_cgroup(dir: &Path) -> Result<v1::CgroupStats, StatsError> {
    if !dir.is_dir() {
        return Err(StatsError::Read {
            path: dir.display().to_string(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
    }
    let cpu_stat = read_optional(dir, "cpu.stat")?;
    let memory_stat = read_optional(dir, "memory.stat")?;
    let memory_current = single_value(&read_optional(dir, "memory.current")?).unwrap_or(0);
    let memory_events = read_optional(dir, "memory.events")?;
    Ok(v1::CgroupStats {
        cpu: Some(v1::CpuStats {
            usage_usec: flat_keyed(&cpu_stat, "usage_usec").unwrap_or(0),
            user_usec: flat_keyed(&cpu_stat, "user_usec").unwrap_or(0),
            system_usec: flat_keyed(&cpu_stat, "system_usec").unwrap_or(0),
        }),
        memory: Some(v1::MemoryStats {
            usage_bytes: memory_current,
            working_set_bytes: working_set(memory_current, &memory_stat),
            rss_bytes: flat_keyed(&memory_stat, "anon").unwrap_or(0),
            oom_kills: flat_keyed(&memory_events, "oom_kill").unwrap_or(0),
            limit_bytes: single_value(&read_optional(dir, "memory.max")?).unwrap_or(0),
        }),
        io: Some(io_stat(&read_optional(dir, "io.stat")?)),
        pids: Some(v1::PidsStats {
            current: single_value(&read_optional(dir, "pids.current")?).unwrap_or(0),
            limit: single_value(&read_optional(dir, "pids.max")?).unwrap_or(0),
        }),
        timestamp_unix_nanos: now_unix_nanos(),
    })
}

/// `MemTotal` and `MemAvailable` of /proc/meminfo, in bytes.
pub fn meminfo(content: &str) -> (u64, u64) {
    let kib = |key: &str| {
        content
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0)
            * 1024
    };
    (kib("MemTotal:"), kib("MemAvailable:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_stat() {
        let content = "usage_usec 123456\nuser_usec 100000\nsystem_usec 23456\nnr_periods 0\n";
        assert_eq!(flat_keyed(content, "usage_usec"), Some(123_456));
        assert_eq!(flat_keyed(content, "system_usec"), Some(23_456));
        assert_eq!(flat_keyed(content, "usage"), None, "keys match whole");
    }

    #[test]
    fn working_set_subtracts_inactive_file() {
        let memory_stat = "anon 4096\nfile 8192\ninactive_file 3000\nactive_file 5192\n";
        assert_eq!(working_set(10_000, memory_stat), 7_000);
        assert_eq!(working_set(1_000, memory_stat), 0, "never below zero");
        assert_eq!(working_set(1_000, ""), 1_000);
    }

    #[test]
    fn single_values_treat_max_as_none() {
        assert_eq!(single_value("max\n"), None);
        assert_eq!(single_value("67108864\n"), Some(64 << 20));
    }

    #[test]
    fn io_stat_sums_devices() {
        let content = "254:0 rbytes=1000 wbytes=2000 rios=3 wios=4 dbytes=0 dios=0\n\
                       254:16 rbytes=10 wbytes=20 rios=1 wios=2 dbytes=0 dios=0\n";
        assert_eq!(
            io_stat(content),
            v1::IoStats {
                read_bytes: 1010,
                write_bytes: 2020,
                read_ops: 4,
                write_ops: 6
            }
        );
        assert_eq!(io_stat(""), v1::IoStats::default());
    }

    #[test]
    fn reads_a_fake_cgroup_directory() {
        let dir = tempfile::tempdir().unwrap();
        let write =
            |name: &str, content: &str| std::fs::write(dir.path().join(name), content).unwrap();
        write("cpu.stat", "usage_usec 50\nuser_usec 30\nsystem_usec 20\n");
        write("memory.current", "8192\n");
        write("memory.stat", "anon 4096\ninactive_file 1024\n");
        write("memory.events", "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n");
        write("memory.max", "max\n");
        write("pids.current", "3\n");
        write("pids.max", "100\n");
        let stats = read_cgroup(dir.path()).unwrap();
        assert_eq!(stats.cpu.unwrap().usage_usec, 50);
        let memory = stats.memory.unwrap();
        assert_eq!(memory.working_set_bytes, 7168);
        assert_eq!(memory.oom_kills, 1);
        assert_eq!(memory.limit_bytes, 0);
        assert_eq!(stats.pids.unwrap().limit, 100);
        assert!(stats.timestamp_unix_nanos > 0);
        assert_eq!(oom_kills(dir.path()), 1);
        assert!(read_cgroup(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn parses_meminfo() {
        let content =
            "MemTotal:         131072 kB\nMemFree:  1000 kB\nMemAvailable:      65536 kB\n";
        assert_eq!(meminfo(content), (128 << 20, 64 << 20));
    }
}
