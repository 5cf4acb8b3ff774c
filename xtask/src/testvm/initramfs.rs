//! The test VM's kernel and initramfs.
//!
//! The kernel is Debian's generic `linux-image-amd64` (it has 9p, kvm_amd,
//! virtio and vhost modules; the cloud flavour lacks 9p). The initramfs holds
//! busybox-static, the modules the test VM needs with their dependencies, and
//! [`INIT_SCRIPT`]. It depends only on those inputs, so it is built once per
//! kernel version into the cache (`testvm/<key>/initramfs.cpio`).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::cache::{CacheLock, cache_root, digest_hex};

/// Bump when the initramfs layout changes.
const INITRAMFS_VERSION: &str = "hull-testvm-initramfs-1";
const BUSYBOX: &str = "/bin/busybox";

/// Modules loaded at boot, in this order (their dependencies first).
/// virtio_mmio: devices of QEMU's microvm machine (found through ACPI);
/// virtio_console: the stdout/stderr/control ports; 9p: the host's files;
/// overlay: a writable root over the read-only host root; kvm_amd: nested KVM;
/// tun, vhost_vsock, virtio_net, virtio_blk: what pod VMs and their reference
/// VMM need; virtio_net also carries the dev node's forwarded ports.
pub const MODULES: &[&str] = &[
    "virtio_mmio",
    "virtio_console",
    "9pnet_virtio",
    "9p",
    "overlay",
    "kvm_amd",
    "tun",
    "vhost_vsock",
    "vhost_net",
    "virtio_net",
    "virtio_blk",
];

/// PID 1 of the test VM. Reads its job from the kernel command line:
/// `hull.job=<host path of a shell script>`, `hull.shares=<p1,p2,..>` (writable
/// host folders, 9p tags `share0`, `share1`, ..) and `hull.tmpfs=<p1,..>`.
/// Reports `ready` and `exit <code>` on the `hull.control` port.
pub const INIT_SCRIPT: &str = r#"#!/bin/busybox sh
# PID 1 of hull's test VM: load modules, show the host's files at the same
# paths (read-only 9p root + tmpfs overlay; writable 9p shares on top), run
# the job in a chroot and report its exit status on the control port.
/bin/busybox mkdir -p /proc /sys /dev /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

fail() {
    echo "hull-testvm: $*" >&2
    [ -n "$control" ] && echo "error $*" > "$control"
    sync
    reboot -f
}

for module in $(cat /modules/order); do
    insmod "/modules/$module" || fail "cannot load $module"
done

port() {
    for dir in /sys/class/virtio-ports/*; do
        if [ "$(cat "$dir/name" 2>/dev/null)" = "$1" ]; then
            echo "/dev/${dir##*/}"
            return 0
        fi
    done
    return 1
}
control=$(port hull.control) || fail "no hull.control port"
stdout=$(port hull.stdout) || fail "no hull.stdout port"
stderr=$(port hull.stderr) || fail "no hull.stderr port"

job= shares= tmpfs= guest_ip=
for word in $(cat /proc/cmdline); do
    case "$word" in
        hull.job=*) job=${word#hull.job=} ;;
        hull.shares=*) shares=${word#hull.shares=} ;;
        hull.tmpfs=*) tmpfs=${word#hull.tmpfs=} ;;
        hull.ip=*) guest_ip=${word#hull.ip=} ;;
    esac
done
[ -n "$job" ] || fail "no hull.job= on the kernel command line"

mkdir -p /host /overlay /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 hostroot /host \
    || fail "cannot mount the host's root over 9p"
mount -t tmpfs -o mode=0755 overlay /overlay
mkdir -p /overlay/upper /overlay/work
mount -t overlay -o lowerdir=/host,upperdir=/overlay/upper,workdir=/overlay/work overlay /newroot \
    || fail "cannot mount the overlay root"
index=0
for share in $(echo "$shares" | tr ',' ' '); do
    mkdir -p "/newroot$share"
    mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 "share$index" "/newroot$share" \
        || fail "cannot mount writable share $share"
    index=$((index + 1))
done
mount -t proc proc /newroot/proc
mount -t sysfs sysfs /newroot/sys
mount -t devtmpfs devtmpfs /newroot/dev
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts devpts /newroot/dev/pts
mount -t tmpfs tmpfs /newroot/dev/shm
mount -t cgroup2 cgroup2 /newroot/sys/fs/cgroup
for dir in $(echo "$tmpfs" | tr ',' ' '); do
    mkdir -p "/newroot$dir"
    mount -t tmpfs -o mode=0755 tmpfs "/newroot$dir" || fail "cannot mount tmpfs on $dir"
done

# Modules the kernel asks for on demand (veth, bridge, netfilter, tc...)
# come from the host's /lib/modules: the kernel's modprobe helper runs in
# this initramfs root, so it enters the new root first.
rm -f /sbin/modprobe
printf '#!/bin/busybox sh\nexec /bin/busybox chroot /newroot /sbin/modprobe "$@"\n' > /sbin/modprobe
chmod 755 /sbin/modprobe
echo /sbin/modprobe > /proc/sys/kernel/modprobe

ip link set lo up
if [ -n "$guest_ip" ]; then
    ip link set eth0 up && ip addr add "$guest_ip/24" dev eth0 && ip route add default via "${guest_ip%.*}.2" \
        || fail "cannot configure eth0"
fi
hostname hull-testvm

echo "ready $(cut -d' ' -f1 /proc/uptime)" > "$control"
chroot /newroot /bin/sh "$job" < /dev/null > "$stdout" 2> "$stderr"
echo "exit $?" > "$control"
sync
reboot -f
"#;

/// The test VM's kernel and initramfs files.
#[derive(Debug, Clone)]
pub struct BootFiles {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
}

/// Finds Debian's generic kernel and builds (or reuses) the initramfs.
pub fn prepare() -> Result<BootFiles> {
    let release = generic_kernel_release()?;
    let kernel = PathBuf::from(format!("/boot/vmlinuz-{release}"));
    if !kernel.is_file() {
        bail!(
            "{} is missing although linux-image-{release} is installed",
            kernel.display()
        );
    }
    let modules_dir = PathBuf::from(format!("/lib/modules/{release}"));
    let dep_text = std::fs::read_to_string(modules_dir.join("modules.dep"))
        .with_context(|| format!("cannot read {}/modules.dep", modules_dir.display()))?;
    let order = load_order(&parse_modules_dep(&dep_text), MODULES)?;
    let busybox = std::fs::read(BUSYBOX)
        .with_context(|| format!("cannot read {BUSYBOX} (Debian busybox-static)"))?;

    let order_text = order.join("\n");
    let key = digest_hex(&[
        INITRAMFS_VERSION.as_bytes(),
        release.as_bytes(),
        INIT_SCRIPT.as_bytes(),
        order_text.as_bytes(),
        &busybox,
    ]);
    let dir = cache_root().join("testvm").join(&key[..16]);
    let initramfs = dir.join("initramfs.cpio");
    let _lock = CacheLock::acquire(&cache_root().join("testvm").join(".lock"))?;
    let files = BootFiles {
        kernel: uncompressed_kernel(&kernel, &dir)?,
        initramfs: initramfs.clone(),
    };
    if initramfs.is_file() {
        return Ok(files);
    }

    let staging = dir.join("staging");
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    for sub in ["bin", "modules", "dev", "proc", "sys"] {
        std::fs::create_dir_all(staging.join(sub))?;
    }
    std::fs::write(staging.join("bin/busybox"), &busybox)?;
    set_mode(&staging.join("bin/busybox"), 0o755)?;
    std::fs::write(staging.join("init"), INIT_SCRIPT)?;
    set_mode(&staging.join("init"), 0o755)?;
    let mut names = Vec::new();
    for relative in &order {
        let source = modules_dir.join(relative);
        let name = file_name(relative);
        std::fs::copy(&source, staging.join("modules").join(&name))
            .with_context(|| format!("cannot copy {}", source.display()))?;
        names.push(name);
    }
    std::fs::write(staging.join("modules/order"), names.join("\n") + "\n")?;
    pack_cpio(&staging, &initramfs)?;
    std::fs::remove_dir_all(&staging)?;
    Ok(files)
}

/// The ELF `vmlinux` inside Debian's XZ-compressed bzImage, extracted once
/// into `dir`; or the bzImage itself when it holds no XZ stream.
///
/// QEMU boots an ELF kernel through its PVH entry point with no
/// decompression step. Under TCG that step (XZ, ~60 MB out) took ~4 s of the
/// test VM's ~6.5 s boot to init; the ELF boots to init in ~2.7 s.
fn uncompressed_kernel(bzimage: &Path, dir: &Path) -> Result<PathBuf> {
    let vmlinux = dir.join("vmlinux");
    if vmlinux.is_file() {
        return Ok(vmlinux);
    }
    let image =
        std::fs::read(bzimage).with_context(|| format!("cannot read {}", bzimage.display()))?;
    let Some(offset) = xz_payload_offset(&image) else {
        eprintln!(
            "xtask: {} holds no XZ stream; booting it compressed (slower)",
            bzimage.display()
        );
        return Ok(bzimage.to_path_buf());
    };
    std::fs::create_dir_all(dir)?;
    let mut child = Command::new("xz")
        .args(["--decompress", "--stdout", "--single-stream"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run xz (Debian xz-utils)")?;
    let mut stdin = child.stdin.take().context("xz has no stdin")?;
    let stream = image[offset..].to_vec();
    let feeder = std::thread::spawn(move || {
        use std::io::Write;
        // xz stops reading after the stream's end; a broken pipe then is fine.
        let _ = stdin.write_all(&stream);
    });
    let out = child.wait_with_output()?;
    let _ = feeder.join();
    if !out.status.success() || !out.stdout.starts_with(b"\x7fELF") {
        bail!(
            "cannot extract an ELF kernel from {} (xz {})",
            bzimage.display(),
            out.status
        );
    }
    let tmp = vmlinux.with_extension("partial");
    std::fs::write(&tmp, &out.stdout)?;
    std::fs::rename(&tmp, &vmlinux)?;
    Ok(vmlinux)
}

const XZ_MAGIC: &[u8] = b"\xfd7zXZ\x00";

/// Where a bzImage's compressed kernel starts, if it is XZ: the boot
/// protocol's `payload_offset` (setup header, 0x248) counts from the
/// protected-mode code, which follows `setup_sects` (0x1f1; 0 means 4)
/// 512-byte sectors and the boot sector.
fn xz_payload_offset(image: &[u8]) -> Option<usize> {
    let setup_sects = match *image.get(0x1f1)? {
        0 => 4,
        n => usize::from(n),
    };
    let payload = u32::from_le_bytes(image.get(0x248..0x24c)?.try_into().ok()?);
    let offset = (setup_sects + 1) * 512 + usize::try_from(payload).ok()?;
    image
        .get(offset..offset + XZ_MAGIC.len())
        .is_some_and(|magic| magic == XZ_MAGIC)
        .then_some(offset)
}

/// The kernel release `linux-image-amd64` points at, e.g. `6.1.0-56-amd64`.
fn generic_kernel_release() -> Result<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Depends}", "linux-image-amd64"])
        .output()
        .context("cannot run dpkg-query")?;
    let depends = String::from_utf8_lossy(&out.stdout);
    depends
        .split(',')
        .map(|dep| dep.split_whitespace().next().unwrap_or(""))
        .find_map(|name| name.strip_prefix("linux-image-"))
        .map(str::to_string)
        .with_context(|| {
            format!("linux-image-amd64 depends on no linux-image-<release> (got {depends:?})")
        })
}

/// `modules.dep`: module name (dashes as underscores) → (path, dependency paths).
type ModuleDeps = HashMap<String, (String, Vec<String>)>;

fn module_name(path: &str) -> String {
    let file = file_name(path);
    let stem = file.split(".ko").next().unwrap_or(&file);
    stem.replace('-', "_")
}

fn file_name(path: &str) -> String {
    path.rsplit('/').next().unwrap_or(path).to_string()
}

fn parse_modules_dep(text: &str) -> ModuleDeps {
    text.lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(path, deps)| {
            let deps = deps.split_whitespace().map(str::to_string).collect();
            (module_name(path), (path.to_string(), deps))
        })
        .collect()
}

/// Paths (relative to `/lib/modules/<release>`) to load, dependencies first.
fn load_order(deps: &ModuleDeps, wanted: &[&str]) -> Result<Vec<String>> {
    fn visit(
        name: &str,
        deps: &ModuleDeps,
        seen: &mut HashSet<String>,
        order: &mut Vec<String>,
    ) -> Result<()> {
        if !seen.insert(name.to_string()) {
            return Ok(());
        }
        let (path, requires) = deps
            .get(name)
            .with_context(|| format!("module {name} is not in modules.dep"))?;
        for dependency in requires {
            visit(&module_name(dependency), deps, seen, order)?;
        }
        order.push(path.clone());
        Ok(())
    }
    let mut seen = HashSet::new();
    let mut order = Vec::new();
    for name in wanted {
        visit(name, deps, &mut seen, &mut order)?;
    }
    Ok(order)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Packs `dir` into a newc cpio archive at `out` with the `cpio` tool.
fn pack_cpio(dir: &Path, out: &Path) -> Result<()> {
    let tmp = out.with_extension("partial");
    let file = std::fs::File::create(&tmp)?;
    let mut find = Command::new("find")
        .arg(".")
        .current_dir(dir)
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run find")?;
    let status = Command::new("cpio")
        .args(["--quiet", "-o", "-H", "newc", "--owner", "0:0"])
        .current_dir(dir)
        .stdin(find.stdout.take().context("find has no stdout")?)
        .stdout(file)
        .status()
        .context("cannot run cpio (Debian cpio)")?;
    let find_status = find.wait()?;
    if !status.success() || !find_status.success() {
        bail!(
            "packing {} failed: find {find_status}, cpio {status}",
            dir.display()
        );
    }
    std::fs::rename(&tmp, out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "kernel/arch/x86/kvm/kvm-amd.ko: kernel/arch/x86/kvm/kvm.ko kernel/virt/lib/irqbypass.ko kernel/drivers/crypto/ccp/ccp.ko\n\
kernel/arch/x86/kvm/kvm.ko: kernel/virt/lib/irqbypass.ko\n\
kernel/virt/lib/irqbypass.ko:\n\
kernel/drivers/crypto/ccp/ccp.ko:\n";

    #[test]
    fn dependencies_load_first_and_once() {
        let deps = parse_modules_dep(DEP);
        let order = load_order(&deps, &["kvm_amd", "kvm"]).unwrap();
        assert_eq!(
            order,
            vec![
                "kernel/virt/lib/irqbypass.ko",
                "kernel/arch/x86/kvm/kvm.ko",
                "kernel/drivers/crypto/ccp/ccp.ko",
                "kernel/arch/x86/kvm/kvm-amd.ko",
            ]
        );
    }

    #[test]
    fn unknown_module_is_an_error() {
        let deps = parse_modules_dep(DEP);
        let err = load_order(&deps, &["nope"]).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn xz_payload_found_through_the_setup_header() {
        let mut image = vec![0u8; 4096];
        image[0x1f1] = 2; // setup sectors: code starts at 3 * 512
        image[0x248..0x24c].copy_from_slice(&100u32.to_le_bytes());
        image[1636..1642].copy_from_slice(XZ_MAGIC);
        assert_eq!(xz_payload_offset(&image), Some(1636));
        image[1636] = 0x1f; // a gzip payload is not XZ
        assert_eq!(xz_payload_offset(&image), None);
        assert_eq!(xz_payload_offset(&[0u8; 16]), None);
    }

    #[test]
    fn compressed_module_names() {
        assert_eq!(module_name("kernel/fs/9p/9p.ko.xz"), "9p");
        assert_eq!(module_name("kernel/a/kvm-amd.ko"), "kvm_amd");
    }
}
