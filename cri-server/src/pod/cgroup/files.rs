//! What the cgroup v2 interface files say and what hulld writes to them:
//! pure functions, so every format is tested without a cgroup hierarchy.
//! The formats are the kernel's (`Documentation/admin-guide/cgroup-v2.rst`).

use std::collections::HashMap;

/// `cpu.weight` from CRI/OCI `cpu.shares`, as runc (≥ 1.3.2, the
/// opencontainers/cgroups library) and crun (≥ 1.23) convert it: a quadratic
/// in log space that maps the ends of the ranges onto each other and the
/// cgroup v1 default onto the v2 default (2 → 1, 1024 → 100, 262144 → 10000).
/// The older linear formula sent 1024 shares to weight 39, so a pod on a v2
/// host got less than its fair share next to cgroups left at the default.
/// 0 means "not set" and stays 0; out-of-range values are clamped.
pub fn cpu_weight_from_shares(shares: u64) -> u64 {
    const SHARES_MIN: u64 = 2;
    const SHARES_MAX: u64 = 1 << 18;
    const WEIGHT_MAX: u64 = 10_000;
    match shares {
        0 => 0,
        s if s <= SHARES_MIN => 1,
        s if s >= SHARES_MAX => WEIGHT_MAX,
        s => {
            let l = (s as f64).log2();
            let exponent = (l * l + 125.0 * l) / 612.0 - 7.0 / 34.0;
            // At 1024 the exponent is exactly 2 in f64 too (a test holds
            // this), so ceil() gives 100 and not 101.
            (10f64.powf(exponent).ceil() as u64).clamp(1, WEIGHT_MAX)
        }
    }
}

/// The `cpu.max` line: `$QUOTA $PERIOD`, `max` for no quota.
pub fn cpu_max_line(quota_us: Option<u64>, period_us: u64) -> String {
    match quota_us {
        Some(quota) => format!("{quota} {period_us}"),
        None => format!("max {period_us}"),
    }
}

/// A byte or count limit as the kernel takes it: a number, or `max`.
pub fn limit_value(limit: Option<u64>) -> String {
    limit.map_or_else(|| "max".to_string(), |value| value.to_string())
}

/// `key value` lines (`cpu.stat`, `memory.stat`, `memory.events`,
/// `cgroup.events`). Lines that are not `key <u64>` are an error naming the
/// line; the caller adds the file.
pub fn parse_flat_keyed(text: &str) -> Result<HashMap<&str, u64>, String> {
    let mut values = HashMap::new();
    for line in text.lines().filter(|line| !line.trim().is_empty()) {
        let mut fields = line.split_whitespace();
        let (Some(key), Some(value), None) = (fields.next(), fields.next(), fields.next()) else {
            return Err(format!("line {line:?} is not \"key value\""));
        };
        let value = value
            .parse()
            .map_err(|_| format!("line {line:?} has no unsigned number"))?;
        values.insert(key, value);
    }
    Ok(values)
}

/// CPU time of a cgroup, from `cpu.stat` (microseconds, as the kernel
/// counts). `usage_usec`, `user_usec` and `system_usec` are there even when
/// the cpu controller is not enabled; the throttling keys only with it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuStat {
    pub usage_usec: u64,
    pub user_usec: u64,
    pub system_usec: u64,
    pub nr_periods: u64,
    pub nr_throttled: u64,
    pub throttled_usec: u64,
}

impl CpuStat {
    pub fn parse(text: &str) -> Result<Self, String> {
        let values = parse_flat_keyed(text)?;
        let usage_usec = *values
            .get("usage_usec")
            .ok_or_else(|| "no usage_usec line".to_string())?;
        let get = |key| values.get(key).copied().unwrap_or(0);
        Ok(Self {
            usage_usec,
            user_usec: get("user_usec"),
            system_usec: get("system_usec"),
            nr_periods: get("nr_periods"),
            nr_throttled: get("nr_throttled"),
            throttled_usec: get("throttled_usec"),
        })
    }
}

/// The parts of `memory.stat` hulld reports (bytes, and fault counts).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStat {
    /// Anonymous memory: for a VMM, nearly all of it is guest RAM that the
    /// guest touched. cAdvisor reports this as the cgroup's RSS on v2.
    pub anon: u64,
    /// Page cache (the VMM's disk images read through the host cache).
    pub file: u64,
    /// Page cache the kernel would reclaim first; the kubelet's working set
    /// is usage minus this.
    pub inactive_file: u64,
    pub active_file: u64,
    /// Kernel memory charged to the cgroup (page tables, slab, stacks).
    pub kernel: u64,
    pub shmem: u64,
    pub pgfault: u64,
    pub pgmajfault: u64,
}

impl MemoryStat {
    pub fn parse(text: &str) -> Result<Self, String> {
        let values = parse_flat_keyed(text)?;
        let get = |key| values.get(key).copied().unwrap_or(0);
        if !values.contains_key("anon") {
            return Err("no anon line".to_string());
        }
        Ok(Self {
            anon: get("anon"),
            file: get("file"),
            inactive_file: get("inactive_file"),
            active_file: get("active_file"),
            kernel: get("kernel"),
            shmem: get("shmem"),
            pgfault: get("pgfault"),
            pgmajfault: get("pgmajfault"),
        })
    }
}

/// The working set as the kubelet (through cAdvisor) computes it on
/// cgroup v2: `memory.current` minus `inactive_file`, never below zero.
pub fn working_set(memory_current: u64, stat: &MemoryStat) -> u64 {
    memory_current.saturating_sub(stat.inactive_file)
}

/// Counters from `memory.events` (hierarchical: they include descendants).
/// `oom_group_kill` exists from Linux 5.17 on and reads 0 before.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryEvents {
    pub low: u64,
    pub high: u64,
    pub max: u64,
    pub oom: u64,
    /// Processes of this cgroup killed by any OOM killer (the cgroup's own
    /// limit, an ancestor's such as the kubelet's pod cgroup, or the node's).
    pub oom_kill: u64,
    /// Times the whole cgroup was killed because of `memory.oom.group`.
    pub oom_group_kill: u64,
}

impl MemoryEvents {
    pub fn parse(text: &str) -> Result<Self, String> {
        let values = parse_flat_keyed(text)?;
        if !values.contains_key("oom_kill") {
            return Err("no oom_kill line".to_string());
        }
        let get = |key| values.get(key).copied().unwrap_or(0);
        Ok(Self {
            low: get("low"),
            high: get("high"),
            max: get("max"),
            oom: get("oom"),
            oom_kill: get("oom_kill"),
            oom_group_kill: get("oom_group_kill"),
        })
    }

    /// Whether an OOM killer has killed anything in the cgroup: when the
    /// VMM vanished, this tells an OOM kill from any other SIGKILL.
    pub fn oom_killed(&self) -> bool {
        self.oom_kill > 0 || self.oom_group_kill > 0
    }
}

/// `cgroup.events`: whether processes remain in the cgroup or below it, and
/// whether it is frozen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupEvents {
    pub populated: bool,
    pub frozen: bool,
}

impl CgroupEvents {
    pub fn parse(text: &str) -> Result<Self, String> {
        let values = parse_flat_keyed(text)?;
        let populated = *values
            .get("populated")
            .ok_or_else(|| "no populated line".to_string())?;
        Ok(Self {
            populated: populated != 0,
            frozen: values.get("frozen").is_some_and(|&frozen| frozen != 0),
        })
    }
}

/// The pids in `cgroup.procs`.
pub fn parse_procs(text: &str) -> Result<Vec<u32>, String> {
    text.split_whitespace()
        .map(|pid| {
            pid.parse()
                .map_err(|_| format!("{pid:?} is not a process id"))
        })
        .collect()
}

/// A space-separated controller list (`cgroup.controllers`,
/// `cgroup.subtree_control`).
pub fn parse_controllers(text: &str) -> Vec<&str> {
    text.split_whitespace().collect()
}

/// One mount from `/proc/self/mountinfo`: where and which filesystem type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub mount_point: String,
    pub fs_type: String,
}

/// The mounts in `/proc/self/mountinfo` text, in mount order. Octal escapes
/// in mount points (`\040` for a space) are decoded; lines that do not parse
/// are skipped (the kernel writes them, a bad one is not worth failing on).
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let mount_point = before.split(' ').nth(4)?;
            let fs_type = after.split(' ').next()?;
            Some(Mount {
                mount_point: unescape_octal(mount_point),
                fs_type: fs_type.to_string(),
            })
        })
        .collect()
}

fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let digits = bytes.get(i + 1..i + 4);
        if bytes[i] == b'\\' && digits.is_some_and(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)))
        {
            let digits = &field[i + 1..i + 4];
            if let Ok(value) = u8::from_str_radix(digits, 8) {
                out.push(value);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// How the cgroup filesystems of a host are laid out, judged from its
/// mounts: hull runs only where `/sys/fs/cgroup` is the unified hierarchy.
/// The error text says what was found instead.
pub fn classify_cgroup_mounts(mounts: &[Mount], sys_fs_cgroup: &str) -> Result<(), String> {
    // The last mount on a mount point is the visible one.
    let top = mounts
        .iter()
        .rev()
        .find(|mount| mount.mount_point == sys_fs_cgroup);
    if top.is_some_and(|mount| mount.fs_type == "cgroup2") {
        return Ok(());
    }
    let v1: Vec<&str> = mounts
        .iter()
        .filter(|mount| mount.fs_type == "cgroup")
        .map(|mount| mount.mount_point.as_str())
        .collect();
    let v2: Vec<&str> = mounts
        .iter()
        .filter(|mount| mount.fs_type == "cgroup2")
        .map(|mount| mount.mount_point.as_str())
        .collect();
    let at_root = match top {
        Some(mount) => format!("{sys_fs_cgroup} is {}", mount.fs_type),
        None => format!("nothing is mounted at {sys_fs_cgroup}"),
    };
    let mut found = at_root;
    if !v1.is_empty() {
        found.push_str(&format!(
            "; cgroup v1 hierarchies at {}",
            v1.iter().take(4).copied().collect::<Vec<_>>().join(", ")
        ));
        if v1.len() > 4 {
            found.push_str(&format!(" and {} more", v1.len() - 4));
        }
    }
    if !v2.is_empty() {
        found.push_str(&format!("; cgroup2 at {}", v2.join(", ")));
    }
    if !v1.is_empty() {
        found.push_str(" (a hybrid or legacy cgroup host)");
    }
    Err(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_to_weight_matches_runc_and_crun() {
        // The fixed points of the formula and its edges.
        assert_eq!(cpu_weight_from_shares(0), 0);
        assert_eq!(cpu_weight_from_shares(1), 1);
        assert_eq!(cpu_weight_from_shares(2), 1);
        assert_eq!(cpu_weight_from_shares(1024), 100);
        assert_eq!(cpu_weight_from_shares(262_144), 10_000);
        assert_eq!(cpu_weight_from_shares(1 << 20), 10_000);
        // Values between, as the published formula gives them
        // (ceil(10^((l²+125l)/612 − 7/34)), l = log2(shares)).
        assert_eq!(cpu_weight_from_shares(3), 2);
        assert_eq!(cpu_weight_from_shares(102), 17);
        assert_eq!(cpu_weight_from_shares(512), 59);
        assert_eq!(cpu_weight_from_shares(2048), 174);
        assert_eq!(cpu_weight_from_shares(4096), 303);
        assert_eq!(cpu_weight_from_shares(262_143), 10_000);
        // Monotonic over the whole range, and inside it.
        let mut last = 1;
        for shares in 2..=262_144 {
            let weight = cpu_weight_from_shares(shares);
            assert!(weight >= last, "shares {shares}: {weight} < {last}");
            assert!((1..=10_000).contains(&weight));
            last = weight;
        }
    }

    #[test]
    fn limit_file_contents() {
        assert_eq!(cpu_max_line(Some(50_000), 100_000), "50000 100000");
        assert_eq!(cpu_max_line(None, 100_000), "max 100000");
        assert_eq!(limit_value(Some(16 << 20)), "16777216");
        assert_eq!(limit_value(None), "max");
    }

    #[test]
    fn cpu_stat_with_and_without_the_cpu_controller() {
        let full = "usage_usec 1234567\nuser_usec 1000000\nsystem_usec 234567\n\
                    core_sched.force_idle_usec 0\nnr_periods 10\nnr_throttled 3\n\
                    throttled_usec 4500\nnr_bursts 0\nburst_usec 0\n";
        let stat = CpuStat::parse(full).unwrap();
        assert_eq!(
            stat,
            CpuStat {
                usage_usec: 1_234_567,
                user_usec: 1_000_000,
                system_usec: 234_567,
                nr_periods: 10,
                nr_throttled: 3,
                throttled_usec: 4500,
            }
        );
        let core_only = "usage_usec 5\nuser_usec 3\nsystem_usec 2\n";
        assert_eq!(CpuStat::parse(core_only).unwrap().nr_throttled, 0);
        assert!(
            CpuStat::parse("user_usec 3\n")
                .unwrap_err()
                .contains("usage_usec")
        );
        assert!(
            CpuStat::parse("usage_usec lots\n")
                .unwrap_err()
                .contains("lots")
        );
        assert!(CpuStat::parse("usage_usec 1 2\n").is_err());
    }

    #[test]
    fn memory_stat_and_working_set() {
        let text = "anon 10485760\nfile 4194304\nkernel 524288\nkernel_stack 16384\n\
                    pagetables 65536\nshmem 0\nactive_anon 10000000\ninactive_anon 485760\n\
                    active_file 1048576\ninactive_file 3145728\npgfault 2500\npgmajfault 7\n\
                    workingset_refault_anon 0\n";
        let stat = MemoryStat::parse(text).unwrap();
        assert_eq!(stat.anon, 10 << 20);
        assert_eq!(stat.file, 4 << 20);
        assert_eq!(stat.inactive_file, 3 << 20);
        assert_eq!(stat.active_file, 1 << 20);
        assert_eq!(stat.kernel, 512 << 10);
        assert_eq!((stat.pgfault, stat.pgmajfault), (2500, 7));
        assert_eq!(working_set(15 << 20, &stat), 12 << 20);
        // inactive_file can exceed usage for a moment (charged elsewhere
        // first); the kubelet clamps to zero.
        assert_eq!(working_set(1 << 20, &stat), 0);
        assert!(MemoryStat::parse("file 1\n").is_err());
    }

    #[test]
    fn memory_events_old_and_new_kernels() {
        let new = "low 0\nhigh 12\nmax 40\noom 2\noom_kill 1\noom_group_kill 1\n";
        let events = MemoryEvents::parse(new).unwrap();
        assert_eq!(
            events,
            MemoryEvents {
                low: 0,
                high: 12,
                max: 40,
                oom: 2,
                oom_kill: 1,
                oom_group_kill: 1,
            }
        );
        assert!(events.oom_killed());
        let old = "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n";
        let events = MemoryEvents::parse(old).unwrap();
        assert_eq!(events.oom_group_kill, 0);
        assert!(!events.oom_killed());
        assert!(
            MemoryEvents::parse("low 0\n")
                .unwrap_err()
                .contains("oom_kill")
        );
    }

    #[test]
    fn cgroup_events() {
        let events = CgroupEvents::parse("populated 1\nfrozen 0\n").unwrap();
        assert!(events.populated && !events.frozen);
        let events = CgroupEvents::parse("populated 0\nfrozen 1\n").unwrap();
        assert!(!events.populated && events.frozen);
        assert!(CgroupEvents::parse("frozen 0\n").is_err());
        assert!(CgroupEvents::parse("populated yes\n").is_err());
    }

    #[test]
    fn procs_and_controllers() {
        assert_eq!(parse_procs("12\n345\n").unwrap(), vec![12, 345]);
        assert_eq!(parse_procs("").unwrap(), Vec::<u32>::new());
        assert!(parse_procs("12\nx\n").is_err());
        assert_eq!(
            parse_controllers("cpuset cpu io memory pids\n"),
            vec!["cpuset", "cpu", "io", "memory", "pids"]
        );
        assert!(parse_controllers("\n").is_empty());
    }

    fn mount(point: &str, fs_type: &str) -> Mount {
        Mount {
            mount_point: point.to_string(),
            fs_type: fs_type.to_string(),
        }
    }

    #[test]
    fn mountinfo_lines() {
        let text = "25 30 0:23 / /sys rw,nosuid shared:7 - sysfs sysfs rw\n\
                    31 25 0:28 / /sys/fs/cgroup rw,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate\n\
                    40 30 0:40 / /mnt/with\\040space rw - tmpfs tmpfs rw\n\
                    garbage\n";
        assert_eq!(
            parse_mountinfo(text),
            vec![
                mount("/sys", "sysfs"),
                mount("/sys/fs/cgroup", "cgroup2"),
                mount("/mnt/with space", "tmpfs"),
            ]
        );
    }

    #[test]
    fn unified_host_is_accepted() {
        let mounts = [mount("/sys", "sysfs"), mount("/sys/fs/cgroup", "cgroup2")];
        assert_eq!(classify_cgroup_mounts(&mounts, "/sys/fs/cgroup"), Ok(()));
        // Overmounted by cgroup2 last: the visible one counts.
        let mounts = [
            mount("/sys/fs/cgroup", "tmpfs"),
            mount("/sys/fs/cgroup", "cgroup2"),
        ];
        assert_eq!(classify_cgroup_mounts(&mounts, "/sys/fs/cgroup"), Ok(()));
    }

    #[test]
    fn hybrid_and_legacy_hosts_are_refused_with_what_was_found() {
        let mut hybrid = vec![mount("/sys/fs/cgroup", "tmpfs")];
        for controller in ["cpu", "cpuacct", "cpuset", "memory", "devices", "pids"] {
            hybrid.push(mount(&format!("/sys/fs/cgroup/{controller}"), "cgroup"));
        }
        hybrid.push(mount("/sys/fs/cgroup/unified", "cgroup2"));
        let found = classify_cgroup_mounts(&hybrid, "/sys/fs/cgroup").unwrap_err();
        assert!(found.contains("/sys/fs/cgroup is tmpfs"), "{found}");
        assert!(found.contains("/sys/fs/cgroup/memory"), "{found}");
        assert!(found.contains("and 2 more"), "{found}");
        assert!(
            found.contains("cgroup2 at /sys/fs/cgroup/unified"),
            "{found}"
        );
        assert!(found.contains("hybrid"), "{found}");

        let legacy = [
            mount("/sys/fs/cgroup", "tmpfs"),
            mount("/sys/fs/cgroup/memory", "cgroup"),
        ];
        let found = classify_cgroup_mounts(&legacy, "/sys/fs/cgroup").unwrap_err();
        assert!(!found.contains("cgroup2"), "{found}");

        let found = classify_cgroup_mounts(&[mount("/", "ext4")], "/sys/fs/cgroup").unwrap_err();
        assert_eq!(found, "nothing is mounted at /sys/fs/cgroup");
    }
}
