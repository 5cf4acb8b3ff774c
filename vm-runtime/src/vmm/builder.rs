//! From a [`VmConfig`] to running vCPU and device threads.

use std::fs::{File, OpenOptions};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::IoEventAddress;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::config::{BASE_CMDLINE, ConfigError, TapSource, VmConfig, parse_mac};
use super::events::{EventSender, GuestEvent, VmmEvent};
use super::timeline::{BootPhase, BootTimeline};
use crate::devices::bus::{Bus, BusError};
use crate::devices::legacy::IrqLine;
use crate::devices::legacy::console_log::{ConsoleLog, SharedConsoleWatch};
use crate::devices::legacy::i8042::I8042;
use crate::devices::legacy::serial::SerialConsole;
use crate::devices::virtio::block::{Block, BlockError};
use crate::devices::virtio::mmio::{MmioMetrics, MmioTransport, QUEUE_NOTIFY_OFFSET};
use crate::devices::virtio::net::{Net, Tap, TapError};
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::vsock::Vsock;
use crate::devices::virtio::{VirtioDevice, VirtioInterrupt};
use crate::host_check;
use crate::seccomp::{self, ThreadKind};
use crate::vstate::layout::{
    I8042_PORT_BASE, IRQ_KEYBOARD, IRQ_MAX, IRQ_SERIAL, IRQ_VIRTIO_FIRST, SERIAL_PORT_BASE,
    VIRTIO_MMIO_BASE, VIRTIO_MMIO_SIZE,
};
use crate::vstate::vcpu::{Vcpu, VcpuMetrics};
use crate::vstate::vm::{Capabilities, Vm, VmError, open_kvm};
use crate::vstate::{boot, cpuid, memory, mptable, regs};

/// Why a VM could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("this host cannot run hull's VMs: {0}")]
    KvmUnusable(String),
    #[error("invalid VM config")]
    Config(#[from] ConfigError),
    #[error("KVM setup failed")]
    Vm(#[from] VmError),
    #[error("guest memory")]
    Memory(#[from] memory::MemoryError),
    #[error("kernel boot setup failed")]
    Boot(#[from] boot::BootError),
    #[error("cannot write the MP table")]
    Mptable(#[from] mptable::MptableError),
    #[error("cannot set up vCPU {index}")]
    Vcpu {
        index: u8,
        #[source]
        source: VcpuSetupError,
    },
    #[error("cannot open the console log {path}")]
    ConsoleLog {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set up drive {id}")]
    Drive {
        id: String,
        #[source]
        source: BlockError,
    },
    #[error("cannot set up the {what} device")]
    Device {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set up the {what} device: {message}")]
    DeviceConfig { what: &'static str, message: String },
    #[error("cannot use the tap of network interface {id}")]
    Tap {
        id: String,
        #[source]
        source: TapError,
    },
    #[error("cannot wire device interrupts or notifications in KVM")]
    Wiring(#[source] kvm_ioctls::Error),
    #[error("device address conflict")]
    Bus(#[from] BusError),
    #[error("cannot start the device event loop")]
    EventManager(#[source] event_manager::Error),
    #[error("cannot start the {0} thread")]
    Thread(&'static str, #[source] std::io::Error),
}

/// Why one vCPU could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum VcpuSetupError {
    #[error("KVM refused to create it")]
    Create(#[source] kvm_ioctls::Error),
    #[error("cannot read KVM's supported CPUID")]
    SupportedCpuid(#[source] kvm_ioctls::Error),
    #[error("cannot build its CPUID")]
    Cpuid(#[from] cpuid::CpuidError),
    #[error("KVM refused its CPUID")]
    SetCpuid(#[source] kvm_ioctls::Error),
    #[error("cannot set its registers")]
    Regs(#[from] regs::RegsError),
}

/// Paths and switches from the VMM's command line.
#[derive(Debug, Clone)]
pub struct VmmEnvironment {
    pub console_log: PathBuf,
    /// Seccomp filters for the VM's threads; `None` runs them unconfined.
    pub filters: Option<Arc<seccomp::Filters>>,
}

/// A `boot` request: the config and the file descriptors sent with it.
pub struct BootRequest {
    pub config: VmConfig,
    pub passed_fds: Vec<OwnedFd>,
}

/// One virtio device as the control socket reports it.
pub struct DeviceEntry {
    pub id: String,
    pub kind: &'static str,
    pub mmio_base: u64,
    pub irq: u32,
    pub transport: Arc<MmioMetrics>,
    pub metrics: Box<dyn Fn() -> serde_json::Value + Send + Sync>,
}

/// What the control thread and the main thread share about a running VM.
pub struct VmHandle {
    pub config: VmConfig,
    pub caps: Capabilities,
    pub cmdline: String,
    pub timeline: Arc<BootTimeline>,
    pub console: Arc<Mutex<SerialConsole<File>>>,
    pub console_watch: SharedConsoleWatch,
    pub i8042: Arc<Mutex<I8042>>,
    pub vcpu_metrics: Arc<VcpuMetrics>,
    pub drives: Vec<Arc<Mutex<Block>>>,
    pub devices: Vec<DeviceEntry>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// The VM and its memory live as long as the handle (the process).
    _vm: Vm,
    _mem: GuestMemoryMmap,
}

type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Hands out virtio-mmio windows and interrupt lines in order.
struct MmioDevices<'a> {
    vm: &'a Vm,
    mem: &'a GuestMemoryMmap,
    bus: Bus,
    next_base: u64,
    next_irq: u32,
    cmdline: Vec<String>,
    entries: Vec<DeviceEntry>,
    subscribers: Vec<Subscriber>,
}

impl MmioDevices<'_> {
    fn attach<D>(
        &mut self,
        id: &str,
        kind: &'static str,
        device: Arc<Mutex<D>>,
        metrics: Box<dyn Fn() -> serde_json::Value + Send + Sync>,
    ) -> Result<(), BuildError>
    where
        D: VirtioDevice + MutEventSubscriber + Send + 'static,
    {
        let base = self.next_base;
        let irq = self.next_irq;
        if irq > IRQ_MAX {
            return Err(BuildError::Config(ConfigError::TooManyDevices(
                self.entries.len() + 1,
                crate::vstate::layout::virtio_irq_count(),
            )));
        }
        let irqfd = EventFd::new(libc::EFD_NONBLOCK)
            .map_err(|source| BuildError::Device { what: kind, source })?;
        self.vm
            .fd
            .register_irqfd(&irqfd, irq)
            .map_err(BuildError::Wiring)?;
        for (queue, evt) in crate::devices::bus::lock(&device)
            .queue_events()
            .iter()
            .enumerate()
        {
            self.vm
                .fd
                .register_ioevent(
                    evt,
                    &IoEventAddress::Mmio(base + QUEUE_NOTIFY_OFFSET),
                    queue as u32,
                )
                .map_err(BuildError::Wiring)?;
        }
        let as_virtio: Arc<Mutex<dyn VirtioDevice>> = device.clone();
        let transport = MmioTransport::new(
            as_virtio,
            self.mem.clone(),
            Arc::new(VirtioInterrupt::new(irqfd)),
        );
        let transport_metrics = transport.metrics();
        self.bus
            .insert(Arc::new(Mutex::new(transport)), base, VIRTIO_MMIO_SIZE)?;
        self.cmdline
            .push(format!("virtio_mmio.device=4K@{base:#x}:{irq}"));
        self.subscribers.push(device);
        self.entries.push(DeviceEntry {
            id: id.to_string(),
            kind,
            mmio_base: base,
            irq,
            transport: transport_metrics,
            metrics,
        });
        self.next_base += VIRTIO_MMIO_SIZE;
        self.next_irq += 1;
        Ok(())
    }
}

fn metrics_json<T: serde::Serialize + Send + Sync + 'static>(
    metrics: Arc<T>,
) -> Box<dyn Fn() -> serde_json::Value + Send + Sync> {
    Box::new(move || serde_json::to_value(&*metrics).unwrap_or_default())
}

fn vcpu_setup(index: u8) -> impl FnOnce(VcpuSetupError) -> BuildError {
    move |source| BuildError::Vcpu { index, source }
}

/// Builds the VM described by `request` and starts its threads.
pub fn build(
    request: BootRequest,
    env: &VmmEnvironment,
    events: EventSender,
    timeline: Arc<BootTimeline>,
) -> Result<Arc<VmHandle>, BuildError> {
    let BootRequest { config, passed_fds } = request;
    let support = host_check::check();
    if !support.is_usable() {
        return Err(BuildError::KvmUnusable(support.to_string()));
    }
    config.validate()?;
    let filters = env.filters.clone();

    let (kvm, caps) = open_kvm()?;
    let mem = memory::create_guest_memory(config.memory_mib)?;
    let vm = Vm::new(kvm, caps, &mem)?;
    timeline.mark(BootPhase::KvmReady);

    let kernel = boot::load_kernel(&mem, &config.kernel)?;
    let initramfs = config
        .initramfs
        .as_deref()
        .map(|path| boot::load_initramfs(&mem, path, &kernel))
        .transpose()?;

    // Legacy devices on the port I/O bus.
    let console_watch = SharedConsoleWatch::default();
    let log_file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&env.console_log)
        .map_err(|source| BuildError::ConsoleLog {
            path: env.console_log.display().to_string(),
            source,
        })?;
    let power_down_events = events.clone();
    let console_log =
        ConsoleLog::new(log_file, console_watch.clone()).on_power_down(Box::new(move || {
            let _ = power_down_events.send(VmmEvent::Guest(GuestEvent::PowerOff));
        }));
    let serial_irq = legacy_irq(&vm, IRQ_SERIAL, "serial")?;
    let console = Arc::new(Mutex::new(SerialConsole::new(serial_irq, console_log)));
    let reset_events = events.clone();
    let i8042 = Arc::new(Mutex::new(I8042::new(
        legacy_irq(&vm, IRQ_KEYBOARD, "i8042")?,
        Box::new(move || {
            let _ = reset_events.send(VmmEvent::Guest(GuestEvent::Reset));
        }),
    )));
    let mut pio = Bus::default();
    pio.insert(console.clone(), u64::from(SERIAL_PORT_BASE), 8)?;
    pio.insert(i8042.clone(), u64::from(I8042_PORT_BASE), 5)?;

    // virtio-mmio devices.
    let mut mmio = MmioDevices {
        vm: &vm,
        mem: &mem,
        bus: Bus::default(),
        next_base: VIRTIO_MMIO_BASE,
        next_irq: IRQ_VIRTIO_FIRST,
        cmdline: Vec::new(),
        entries: Vec::new(),
        subscribers: Vec::new(),
    };
    let mut drives = Vec::new();
    for drive in &config.drives {
        let block =
            Block::new(&drive.id, drive.path.as_deref(), drive.read_only).map_err(|source| {
                BuildError::Drive {
                    id: drive.id.clone(),
                    source,
                }
            })?;
        let metrics = metrics_json(block.metrics());
        let block = Arc::new(Mutex::new(block));
        mmio.attach(&drive.id, "block", block.clone(), metrics)?;
        drives.push(block);
    }
    if let Some(vsock) = &config.vsock {
        let device =
            Vsock::new(vsock.guest_cid, &vsock.uds_path).map_err(|source| BuildError::Device {
                what: "vsock",
                source,
            })?;
        let metrics = metrics_json(device.metrics());
        mmio.attach("vsock", "vsock", Arc::new(Mutex::new(device)), metrics)?;
    }
    let mut passed_fds: Vec<Option<OwnedFd>> = passed_fds.into_iter().map(Some).collect();
    for net in &config.net {
        let tap = match &net.tap {
            TapSource::Name(name) => Tap::open_named(name),
            TapSource::PassedFd(index) => {
                let fd = passed_fds
                    .get_mut(*index)
                    .and_then(Option::take)
                    .ok_or_else(|| BuildError::DeviceConfig {
                        what: "net",
                        message: format!(
                            "no file descriptor {index} was passed with the boot request"
                        ),
                    })?;
                Tap::from_fd(fd)
            }
        }
        .map_err(|source| BuildError::Tap {
            id: net.id.clone(),
            source,
        })?;
        let mac = match &net.mac {
            Some(mac) => parse_mac(mac)?,
            None => random_mac(),
        };
        let device = Net::new(&net.id, tap, mac).map_err(|source| BuildError::Device {
            what: "net",
            source,
        })?;
        let metrics = metrics_json(device.metrics());
        mmio.attach(&net.id, "net", Arc::new(Mutex::new(device)), metrics)?;
    }
    if config.rng {
        let rng = Rng::new().map_err(|source| BuildError::Device {
            what: "rng",
            source,
        })?;
        let metrics = metrics_json(rng.metrics());
        mmio.attach("rng", "rng", Arc::new(Mutex::new(rng)), metrics)?;
    }

    let cmdline = boot::build_cmdline(BASE_CMDLINE, &mmio.cmdline, &config.cmdline_extra)?;
    boot::write_boot_params(&mem, &kernel, &cmdline, initramfs)?;
    mptable::setup_mptable(&mem, config.vcpus)?;
    regs::write_boot_tables(&mem).map_err(|e| vcpu_setup(0)(e.into()))?;
    timeline.mark(BootPhase::KernelLoaded);

    let supported = vm
        .kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| vcpu_setup(0)(VcpuSetupError::SupportedCpuid(e)))?;
    let pio = Arc::new(pio);
    let mmio_bus = Arc::new(std::mem::take(&mut mmio.bus));
    let devices = std::mem::take(&mut mmio.entries);
    let vcpu_metrics = Arc::new(VcpuMetrics::default());
    let mut vcpus = Vec::with_capacity(config.vcpus.into());
    for index in 0..config.vcpus {
        let fd = vm
            .fd
            .create_vcpu(u64::from(index))
            .map_err(|e| vcpu_setup(index)(VcpuSetupError::Create(e)))?;
        let cpuid = cpuid::for_vcpu(&supported, index, config.vcpus, caps.tsc_deadline_timer)
            .map_err(|e| vcpu_setup(index)(e.into()))?;
        fd.set_cpuid2(&cpuid)
            .map_err(|e| vcpu_setup(index)(VcpuSetupError::SetCpuid(e)))?;
        regs::setup_common(&fd).map_err(|e| vcpu_setup(index)(e.into()))?;
        if index == 0 {
            regs::setup_boot_vcpu(&fd, kernel.entry).map_err(|e| vcpu_setup(index)(e.into()))?;
        }
        vcpus.push(Vcpu {
            index,
            fd,
            pio: pio.clone(),
            mmio: mmio_bus.clone(),
            events: events.clone(),
            metrics: vcpu_metrics.clone(),
            timeline: timeline.clone(),
        });
    }
    timeline.mark(BootPhase::DevicesReady);

    let mut event_manager = EventManager::<Subscriber>::new().map_err(BuildError::EventManager)?;
    for subscriber in mmio.subscribers.drain(..) {
        event_manager.add_subscriber(subscriber);
    }
    let mut threads = Vec::new();
    let device_filter = filters.as_ref().map(|f| f.get(ThreadKind::Devices));
    threads.push(
        std::thread::Builder::new()
            .name("hull-devices".into())
            .spawn(move || {
                drop_capabilities("device");
                if let Some(filter) = device_filter {
                    seccomp::apply_or_exit(&filter, ThreadKind::Devices);
                }
                loop {
                    if let Err(error) = event_manager.run() {
                        tracing::error!(?error, "device event loop failed");
                    }
                }
            })
            .map_err(|e| BuildError::Thread("device", e))?,
    );
    for vcpu in vcpus {
        let filter = filters.as_ref().map(|f| f.get(ThreadKind::Vcpu));
        threads.push(
            std::thread::Builder::new()
                .name(format!("hull-vcpu-{}", vcpu.index))
                .spawn(move || {
                    drop_capabilities("vCPU");
                    if let Some(filter) = filter {
                        seccomp::apply_or_exit(&filter, ThreadKind::Vcpu);
                    }
                    vcpu.run();
                })
                .map_err(|e| BuildError::Thread("vCPU", e))?,
        );
    }
    let cmdline = cmdline
        .as_cstring()
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_default();
    tracing::info!(vcpus = config.vcpus, memory_mib = config.memory_mib, %cmdline, "VM started");
    Ok(Arc::new(VmHandle {
        config,
        caps,
        cmdline,
        timeline,
        console,
        console_watch,
        i8042,
        vcpu_metrics,
        drives,
        devices,
        threads: Mutex::new(threads),
        _vm: vm,
        _mem: mem,
    }))
}

/// A random locally administered unicast MAC address.
fn random_mac() -> [u8; 6] {
    let mut mac = [0u8; 6];
    // SAFETY: getrandom writes at most `mac.len()` bytes into `mac`.
    let n = unsafe { libc::getrandom(mac.as_mut_ptr().cast(), mac.len(), 0) };
    if n != mac.len() as isize {
        mac = [0, 0, 0, 0, 0, (std::process::id() & 0xff) as u8];
    }
    mac[0] = (mac[0] & 0xfe) | 0x02;
    mac
}

fn drop_capabilities(thread: &'static str) {
    if let Err(error) = crate::privileges::drop_thread_capabilities() {
        tracing::warn!(thread, %error, "thread keeps its capabilities");
    }
}

fn legacy_irq(vm: &Vm, irq: u32, what: &'static str) -> Result<IrqLine, BuildError> {
    let fd =
        EventFd::new(libc::EFD_NONBLOCK).map_err(|source| BuildError::Device { what, source })?;
    vm.fd.register_irqfd(&fd, irq).map_err(BuildError::Wiring)?;
    Ok(IrqLine(fd))
}

impl VmHandle {
    /// Number of threads the VM runs (vCPUs + device thread).
    pub fn thread_count(&self) -> usize {
        crate::devices::bus::lock(&self.threads).len()
    }
}
