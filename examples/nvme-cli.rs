//! An nvme-cli-like tool on the userspace driver: list NVMe functions and
//! their namespaces, identify, list namespaces, read and write blocks,
//! flush, trim, write zeroes, compare, verify, write uncorrectable, copy,
//! dataset management, SMART log, and nvme-cli's zns plugin commands on
//! zoned namespaces (report-zones, reset-zone, open-zone, close-zone,
//! finish-zone, offline-zone, zone-append).
//!
//! ```text
//! cargo run --release --example nvme-cli -- list
//! cargo run --release --example nvme-cli -- id-ctrl 0000:01:00.0
//! cargo run --release --example nvme-cli -- list-ns 0000:01:00.0
//! cargo run --release --example nvme-cli -- read 0000:01:00.0 -n 1 --lba 0 --blocks 8 -o out.bin
//! cargo run --release --example nvme-cli -- write 0000:01:00.0 -n 1 --lba 0 -i in.bin --yes
//! ```
//!
//! Exit status: 0 success, 1 device or I/O error, 2 bad input (nothing was
//! written). `--json` prints machine-readable output.
//!
//! The device `sim` is an in-process nvme-sim controller (one namespace of
//! 64 MiB in 512-byte blocks, nothing kept after the command): for trying
//! the tool without a disk, and for its tests. With `NVME_SIM_READ_ERROR=LBA`
//! its first Read fails with Unrecovered Read Error and an error log entry
//! naming LBA (to see how a failed command is reported). `sim:KIND[,KIND...]`
//! gives it one 64 MiB namespace per KIND, `nvm`, `zoned` (zones of 1 MiB,
//! at most 8 open and 14 active, all empty at first) or one formatted with
//! metadata (`meta8`, `pi1`, `pi2-ext`, `pi3-first`, `pi1-crc64`,
//! `pi1-ms16`, ...: see nvme-sim's `NamespaceConfig::from_kind`):
//! `sim:nvm,zoned`. `batch FILE` runs a file of commands in one process,
//! where a sim device keeps its blocks from one command to the next, and
//! `sim-corrupt` damages a block of one (to see a protection check fail). With
//! `NVME_SIM_WITHOUT=compare,verify,write-uncor,copy,dsm,write-zeroes` (any
//! of them) the device lacks those optional commands (to see how a refusal
//! is reported).
//!
//! A command that fails with the More bit set is reported with the
//! controller's Error Information log entry for it, on a line of its own.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;

use clap::{Args, Parser, Subcommand};

#[path = "nvme-cli/io_commands.rs"]
mod io_commands;
#[path = "nvme-cli/metadata.rs"]
mod metadata;
#[path = "nvme-cli/zns.rs"]
mod zns;
use nvme_vfio::ctrl::{CommandSet, Config, Controller, Namespace, QueueConfig};

/// Transfers larger than this show a progress line on a terminal.
const PROGRESS_ABOVE: u64 = 4 << 20;
/// Bytes per blocking call of read and write: what one queue pair takes at
/// once on this controller (32 commands of its maximum transfer; the
/// calls take any length, in waves, but progress moves per call), at most
/// 4 MiB.
fn chunk_len(ctrl: &Controller, block_size: u64) -> usize {
    let per_call = (ctrl.max_transfer() * 32).clamp(block_size, 4 << 20);
    (per_call / block_size * block_size) as usize
}

#[derive(Parser)]
#[command(
    name = "nvme-cli",
    version,
    about = "NVMe commands through the userspace VFIO driver"
)]
struct Cli {
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// List NVMe PCI functions and, for those on vfio-pci, their
    /// namespaces: size, usage, LBA format, firmware, model, serial.
    List {
        /// Only these devices (PCI addresses, or `sim`), instead of every
        /// NVMe function in sysfs.
        devices: Vec<String>,
    },
    /// Identify Controller.
    IdCtrl {
        /// PCI address (0000:01:00.0 or 01:00.0), bound to vfio-pci.
        device: String,
    },
    /// Identify Namespace (with its I/O command set, and a zoned
    /// namespace's zones).
    IdNs(NsArg),
    /// List the active namespace IDs and their I/O command sets.
    ListNs {
        /// PCI address.
        device: String,
        /// Only namespaces of this command set: nvm, key-value, zoned or a
        /// CSI number (Identify CNS 07h).
        #[arg(long)]
        csi: Option<String>,
    },
    /// Read blocks to a file or stdout.
    Read(ReadArgs),
    /// Write a file or stdin to blocks.
    Write(WriteArgs),
    /// Flush the volatile write cache.
    Flush(NsArg),
    /// Deallocate (trim) blocks.
    Trim(RangeArgs),
    /// Write zeroes to blocks.
    WriteZeroes(RangeArgs),
    /// Compare blocks with data (Compare): "compare: Success", or the
    /// Compare Failure status and exit 1.
    Compare(io_commands::CompareArgs),
    /// Verify blocks (Verify: the controller reads and checks them, no
    /// data moves).
    Verify(io_commands::BlocksArgs),
    /// Make blocks unreadable until written (Write Uncorrectable).
    WriteUncor(io_commands::BlocksArgs),
    /// Copy source ranges to consecutive blocks (Copy, descriptor format
    /// 0).
    Copy(io_commands::CopyArgs),
    /// Dataset Management of ranges: deallocate (--ad), integral dataset
    /// hints (--idr, --idw), context attributes per range.
    Dsm(io_commands::DsmArgs),
    /// Zoned namespace commands (nvme-cli's zns plugin): report-zones,
    /// reset-zone, open-zone, close-zone, finish-zone, offline-zone,
    /// zone-append.
    Zns {
        #[command(subcommand)]
        cmd: zns::ZnsCmd,
    },
    /// SMART / health log.
    SmartLog {
        /// PCI address.
        device: String,
    },
    /// Get Features: the result dword (and the feature's data with
    /// --data-len).
    GetFeature(GetFeatureArgs),
    /// Set Features.
    SetFeature(SetFeatureArgs),
    /// Get Log Page: any log, length, offset and log specific field.
    GetLog(GetLogArgs),
    /// The Error Information log.
    ErrorLog {
        /// PCI address.
        device: String,
        /// Entries to show (newest first).
        #[arg(short = 'e', long = "log-entries", default_value_t = 16)]
        entries: usize,
    },
    /// The Firmware Slot Information log.
    FwLog {
        /// PCI address.
        device: String,
    },
    /// Format NVM: a namespace to an LBA format (erases its data).
    Format(FormatArgs),
    /// Send an admin command built from its fields.
    AdminPassthru(PassthruArgs),
    /// Send an I/O command built from its fields to a namespace.
    IoPassthru(PassthruArgs),
    /// The controller's registers.
    ShowRegs {
        /// PCI address.
        device: String,
    },
    /// Reset the controller (disable, enable, queues again).
    Reset {
        /// PCI address.
        device: String,
    },
    /// Run the commands of a file, one a line (without the program name;
    /// words split at spaces, `#` lines skipped), stopping at the first
    /// that fails: a `sim` device then keeps its blocks from one command
    /// to the next.
    Batch {
        /// The file of commands.
        file: PathBuf,
    },
    /// Damage a block of a sim device's namespace (nvme-sim's fault
    /// injection, for trying protection checks in a batch): invert the
    /// byte at --offset, counted over the block's data and then its
    /// metadata.
    SimCorrupt {
        /// A sim device (`sim` or `sim:KIND,...`).
        device: String,
        /// Namespace ID.
        #[arg(short = 'n', long = "namespace-id", default_value_t = 1)]
        nsid: u32,
        /// The block.
        #[arg(short = 's', long = "lba", value_parser = num)]
        lba: u64,
        /// The byte in the block's data and metadata.
        #[arg(long, value_parser = num)]
        offset: u64,
    },
}

/// A number in decimal or 0x-prefixed hex.
fn num(s: &str) -> Result<u64, String> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    }
    .map_err(|e| format!("{s}: {e}"))
}

fn num32(s: &str) -> Result<u32, String> {
    num(s).and_then(|v| u32::try_from(v).map_err(|_| format!("{s}: more than 32 bits")))
}

fn num8(s: &str) -> Result<u8, String> {
    num(s).and_then(|v| u8::try_from(v).map_err(|_| format!("{s}: more than 8 bits")))
}

#[derive(Args)]
struct GetFeatureArgs {
    /// PCI address.
    device: String,
    /// Feature identifier.
    #[arg(short = 'f', long = "feature-id", value_parser = num8)]
    fid: u8,
    /// Namespace ID (for namespace features).
    #[arg(short = 'n', long = "namespace-id", default_value = "0", value_parser = num32)]
    nsid: u32,
    /// Select: 0 current, 1 default, 2 saved, 3 supported capabilities.
    #[arg(short = 's', long = "sel", default_value = "0", value_parser = num8)]
    sel: u8,
    /// Dword 11 (some features take a value there).
    #[arg(short = 'c', long = "cdw11", default_value = "0", value_parser = num32)]
    cdw11: u32,
    /// Bytes of feature data to read (at most 4096).
    #[arg(short = 'l', long = "data-len", default_value_t = 0)]
    data_len: usize,
}

#[derive(Args)]
struct SetFeatureArgs {
    /// PCI address.
    device: String,
    /// Feature identifier.
    #[arg(short = 'f', long = "feature-id", value_parser = num8)]
    fid: u8,
    /// The value (dword 11).
    #[arg(short = 'v', long = "value", value_parser = num32)]
    value: u32,
    /// Namespace ID (for namespace features).
    #[arg(short = 'n', long = "namespace-id", default_value = "0", value_parser = num32)]
    nsid: u32,
    /// Keep the value across power cycles.
    #[arg(short = 's', long = "save")]
    save: bool,
}

#[derive(Args)]
struct GetLogArgs {
    /// PCI address.
    device: String,
    /// Log page identifier.
    #[arg(short = 'i', long = "log-id", value_parser = num8)]
    lid: u8,
    /// Bytes to read (a multiple of 4).
    #[arg(short = 'l', long = "log-len")]
    len: usize,
    /// Namespace ID (default: the controller's).
    #[arg(short = 'n', long = "namespace-id", default_value = "0xffffffff", value_parser = num32)]
    nsid: u32,
    /// Byte offset in the log (a multiple of 4).
    #[arg(short = 'o', long = "lpo", default_value = "0", value_parser = num)]
    offset: u64,
    /// Log specific field.
    #[arg(short = 's', long = "lsp", default_value = "0", value_parser = num8)]
    lsp: u8,
    /// Write the log's bytes to stdout as they are.
    #[arg(short = 'b', long = "raw-binary")]
    raw: bool,
}

#[derive(Args)]
struct FormatArgs {
    /// PCI address.
    device: String,
    /// Namespace ID (0xffffffff: all).
    #[arg(short = 'n', long = "namespace-id", default_value = "1", value_parser = num32)]
    nsid: u32,
    /// LBA format index (see id-ns).
    #[arg(short = 'l', long = "lbaf", value_parser = num8)]
    lbaf: u8,
    /// Secure erase: 0 none, 1 user data, 2 cryptographic.
    #[arg(short = 's', long = "ses", default_value = "0", value_parser = num8)]
    ses: u8,
    /// Confirm erasing the namespace.
    #[arg(short = 'y', long, alias = "force")]
    yes: bool,
}

#[derive(Args)]
struct PassthruArgs {
    /// PCI address.
    device: String,
    /// Opcode.
    #[arg(short = 'O', long = "opcode", value_parser = num8)]
    opcode: u8,
    /// Namespace ID.
    #[arg(short = 'n', long = "namespace-id", default_value = "0", value_parser = num32)]
    nsid: u32,
    /// Command dwords 10 to 15.
    #[arg(long = "cdw10", default_value = "0", value_parser = num32)]
    cdw10: u32,
    #[arg(long = "cdw11", default_value = "0", value_parser = num32, help = "Command dword 11")]
    cdw11: u32,
    #[arg(long = "cdw12", default_value = "0", value_parser = num32, help = "Command dword 12")]
    cdw12: u32,
    #[arg(long = "cdw13", default_value = "0", value_parser = num32, help = "Command dword 13")]
    cdw13: u32,
    #[arg(long = "cdw14", default_value = "0", value_parser = num32, help = "Command dword 14")]
    cdw14: u32,
    #[arg(long = "cdw15", default_value = "0", value_parser = num32, help = "Command dword 15")]
    cdw15: u32,
    /// Bytes of data the command moves (0: none).
    #[arg(short = 'l', long = "data-len", default_value_t = 0)]
    data_len: usize,
    /// The data comes from the device (printed).
    #[arg(short = 'r', long = "read", conflicts_with = "write")]
    read: bool,
    /// The data goes to the device (from --input-file).
    #[arg(short = 'w', long = "write")]
    write: bool,
    /// File holding the data to send (with --write).
    #[arg(short = 'i', long = "input-file")]
    input: Option<PathBuf>,
    /// Write the data read to stdout as it is.
    #[arg(short = 'b', long = "raw-binary")]
    raw: bool,
}

#[derive(Args)]
struct NsArg {
    /// PCI address.
    device: String,
    /// Namespace ID.
    #[arg(short = 'n', long = "namespace-id", default_value_t = 1)]
    nsid: u32,
}

#[derive(Args)]
struct ReadArgs {
    #[command(flatten)]
    ns: NsArg,
    /// First logical block.
    #[arg(short = 's', long = "lba")]
    lba: u64,
    /// Number of blocks.
    #[arg(short = 'c', long, conflicts_with = "size")]
    blocks: Option<u64>,
    /// Number of bytes (a multiple of the block size).
    #[arg(short = 'z', long)]
    size: Option<u64>,
    /// Output file (default: stdout).
    #[arg(short = 'o', long)]
    output: Option<PathBuf>,
    #[command(flatten)]
    meta: metadata::MetaArgs,
}

#[derive(Args)]
struct WriteArgs {
    #[command(flatten)]
    ns: NsArg,
    /// First logical block.
    #[arg(short = 's', long = "lba")]
    lba: u64,
    /// Input file (default: stdin).
    #[arg(short = 'i', long)]
    input: Option<PathBuf>,
    /// Pad the data with zeroes to a whole number of blocks.
    #[arg(long)]
    pad: bool,
    /// Confirm overwriting the namespace's data.
    #[arg(long)]
    yes: bool,
    #[command(flatten)]
    meta: metadata::MetaArgs,
}

#[derive(Args)]
struct RangeArgs {
    #[command(flatten)]
    ns: NsArg,
    /// First logical block.
    #[arg(short = 's', long = "lba")]
    lba: u64,
    /// Number of blocks.
    #[arg(short = 'c', long)]
    blocks: u64,
    /// Confirm destroying the blocks' data.
    #[arg(short = 'y', long)]
    yes: bool,
}

/// Why a command failed: bad input (exit 2) or the device (exit 1).
enum Fail {
    Input(String),
    Device(String),
}

impl From<nvme_vfio::Error> for Fail {
    fn from(e: nvme_vfio::Error) -> Self {
        match e {
            nvme_vfio::Error::Invalid(m) => Fail::Input(m),
            nvme_vfio::Error::NoNamespace { .. }
            | nvme_vfio::Error::ZonedNamespace { .. }
            | nvme_vfio::Error::NotZoned { .. }
            | nvme_vfio::Error::CrossesZone { .. }
            | nvme_vfio::Error::UnsupportedCommandSet { .. }
            | nvme_vfio::Error::UnsupportedCommand { .. }
            | nvme_vfio::Error::OverLimit { .. } => Fail::Input(e.to_string()),
            e => Fail::Device(device_message(&e)),
        }
    }
}

impl From<std::io::Error> for Fail {
    fn from(e: std::io::Error) -> Self {
        Fail::Device(e.to_string())
    }
}

fn main() -> ExitCode {
    // Like other Unix tools, end quietly when the reader of stdout goes away
    // (`nvme-cli id-ctrl ... | head`) instead of failing on EPIPE.
    // SAFETY: restoring the default action of SIGPIPE before any thread
    // exists; no handler is involved.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    // The driver's log on stderr: warnings and errors unless RUST_LOG says
    // otherwise (e.g. RUST_LOG=nvme_vfio=debug).
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail::Input(m)) => {
            eprintln!("nvme-cli: {m}");
            ExitCode::from(2)
        }
        Err(Fail::Device(m)) => {
            eprintln!("nvme-cli: {m}");
            ExitCode::from(1)
        }
    }
}

/// A controller, and the software controller behind it for `sim`.
struct Device {
    // Declared first: shut down before the software controller goes.
    ctrl: Controller,
    sim: Option<Rc<nvme_sim::SimController>>,
}

thread_local! {
    /// The software controllers opened so far, by device name: the
    /// commands of a batch find their blocks again.
    static SIMS: RefCell<HashMap<String, Rc<nvme_sim::SimController>>> = RefCell::default();
}

impl std::ops::Deref for Device {
    type Target = Controller;
    fn deref(&self) -> &Controller {
        &self.ctrl
    }
}

fn open(device: &str) -> Result<Device, Fail> {
    let config = Config {
        io_queues: 1,
        ..Config::default()
    };
    if let Some(sim) = SIMS.with(|s| s.borrow().get(device).cloned()) {
        return attach_sim(config, sim);
    }
    if device == "sim" {
        return open_sim(device, config, nvme_sim::Config::default());
    }
    if let Some(kinds) = device.strip_prefix("sim:") {
        let namespaces = kinds
            .split(',')
            .map(|k| {
                nvme_sim::NamespaceConfig::from_kind(k, 128 << 10, 512)
                    .map_err(|e| Fail::Input(format!("sim: {e}")))
            })
            .collect::<Result<Vec<_>, Fail>>()?;
        let sim_config = nvme_sim::Config::default().namespaces(&namespaces);
        return open_sim(device, config, sim_config);
    }
    let ctrl = Controller::open(device, config).map_err(|e| match e {
        nvme_vfio::Error::Vfio(v) => Fail::Input(v.to_string()),
        e => Fail::Device(e.to_string()),
    })?;
    Ok(Device { ctrl, sim: None })
}

fn open_sim(device: &str, config: Config, sim_config: nvme_sim::Config) -> Result<Device, Fail> {
    let mut sim_config = sim_config;
    if let Ok(list) = std::env::var("NVME_SIM_WITHOUT") {
        for c in list.split(',').filter(|c| !c.is_empty()) {
            sim_config = match c {
                "compare" => sim_config.compare(false),
                "verify" => sim_config.verify(false),
                "write-uncor" => sim_config.write_uncorrectable(false),
                "copy" => sim_config.copy(false),
                "dsm" => sim_config.dataset_management(false),
                "write-zeroes" => sim_config.write_zeroes(false),
                c => {
                    return Err(Fail::Input(format!(
                        "NVME_SIM_WITHOUT: unknown command '{c}' (compare, verify, write-uncor, \
                         copy, dsm, write-zeroes)"
                    )))
                }
            };
        }
    }
    let sim = nvme_sim::SimController::new(sim_config).map_err(|e| Fail::Device(e.to_string()))?;
    if let Ok(lba) = std::env::var("NVME_SIM_READ_ERROR") {
        let lba = lba
            .parse()
            .map_err(|_| Fail::Input(format!("NVME_SIM_READ_ERROR={lba}: not an LBA")))?;
        sim.inject(nvme_sim::FaultRule::next(
            nvme_sim::Match::io().opcode(nvme_vfio::nvme::cmd::io::READ),
            nvme_sim::FaultAction::Logged {
                status: nvme_vfio::nvme::cmd::Status::new(2, 0x81, true),
                detail: nvme_sim::ErrorDetail::at_lba(lba),
            },
        ));
    }
    let sim = Rc::new(sim);
    SIMS.with(|s| s.borrow_mut().insert(device.to_string(), sim.clone()));
    attach_sim(config, sim)
}

/// A controller over software controller `sim`.
fn attach_sim(config: Config, sim: Rc<nvme_sim::SimController>) -> Result<Device, Fail> {
    use nvme_vfio::mem::{DmaSpace, SpaceConfig};
    let space = DmaSpace::new(sim.iommu().clone(), SpaceConfig { hugepages: false });
    let config = Config {
        space: SpaceConfig { hugepages: false },
        ..config
    };
    // SAFETY: `space` maps through the model's own IOMMU, the one its device side
    // reaches memory through, and nothing else drives the model.
    let ctrl = unsafe { Controller::with_backend(sim.registers(), space, config, None) }?;
    Ok(Device {
        ctrl,
        sim: Some(sim),
    })
}

fn run(cli: &Cli) -> Result<(), Fail> {
    match &cli.cmd {
        Cmd::List { devices } => list(devices, cli.json),
        Cmd::IdCtrl { device } => id_ctrl(&*open(device)?, cli.json),
        Cmd::IdNs(a) => id_ns(&*open(&a.device)?, a.nsid, cli.json),
        Cmd::ListNs { device, csi } => {
            let csi = csi.as_deref().map(parse_csi).transpose()?;
            list_ns(&*open(device)?, csi, cli.json)
        }
        Cmd::Read(a) => read(a),
        Cmd::Write(a) => write(a),
        Cmd::Flush(a) => {
            let ctrl = open(&a.device)?;
            let ns = ctrl.namespace(a.nsid)?;
            ctrl.queue_pair(QueueConfig::default())?.flush_cache(&ns)?;
            done(cli.json, "flush", &ns, 0, 0);
            Ok(())
        }
        Cmd::Trim(a) | Cmd::WriteZeroes(a) => {
            let trim = matches!(cli.cmd, Cmd::Trim(_));
            let what = if trim { "trim" } else { "write-zeroes" };
            if !a.yes {
                return Err(Fail::Input(format!(
                    "{what} destroys data: add --yes to confirm"
                )));
            }
            let ctrl = open(&a.ns.device)?;
            let ns = ctrl.namespace(a.ns.nsid)?;
            let mut qp = ctrl.queue_pair(QueueConfig::default())?;
            if trim {
                qp.deallocate(&ns, &[(a.lba, a.blocks)])?;
            } else {
                qp.write_zeroes(&ns, a.lba, a.blocks)?;
            }
            done(cli.json, what, &ns, a.lba, a.blocks);
            Ok(())
        }
        Cmd::Compare(a) => io_commands::compare(a, cli.json),
        Cmd::Verify(a) => io_commands::verify(a, cli.json),
        Cmd::WriteUncor(a) => io_commands::write_uncor(a, cli.json),
        Cmd::Copy(a) => io_commands::copy(a, cli.json),
        Cmd::Dsm(a) => io_commands::dsm(a, cli.json),
        Cmd::Zns { cmd } => zns::run(cmd, cli.json),
        Cmd::SmartLog { device } => smart_log(&*open(device)?, cli.json),
        Cmd::GetFeature(a) => get_feature(&*open(&a.device)?, a, cli.json),
        Cmd::SetFeature(a) => set_feature(&*open(&a.device)?, a, cli.json),
        Cmd::GetLog(a) => get_log(&*open(&a.device)?, a, cli.json),
        Cmd::ErrorLog { device, entries } => error_log(&*open(device)?, *entries, cli.json),
        Cmd::FwLog { device } => fw_log(&*open(device)?, cli.json),
        Cmd::Format(a) => format(&*open(&a.device)?, a, cli.json),
        Cmd::AdminPassthru(a) => passthru(&*open(&a.device)?, a, false, cli.json),
        Cmd::IoPassthru(a) => passthru(&*open(&a.device)?, a, true, cli.json),
        Cmd::ShowRegs { device } => show_regs(&*open(device)?, cli.json),
        Cmd::Batch { file } => batch(file),
        Cmd::SimCorrupt {
            device,
            nsid,
            lba,
            offset,
        } => {
            let d = open(device)?;
            let Some(sim) = &d.sim else {
                return Err(Fail::Input(format!(
                    "sim-corrupt: {device} is not a sim device"
                )));
            };
            sim.corrupt(*nsid, *lba, *offset as usize)
                .map_err(|e| Fail::Input(format!("sim-corrupt: {e}")))?;
            eprintln!("sim-corrupt: namespace {nsid}, LBA {lba}, byte {offset}: inverted");
            Ok(())
        }
        Cmd::Reset { device } => {
            open(device)?.reset()?;
            if cli.json {
                println!("{{\"command\":\"reset\",\"status\":\"success\"}}");
            } else {
                eprintln!("reset: success");
            }
            Ok(())
        }
    }
}

/// `data` as nvme-cli prints it: 16 bytes a line, offset, hex, text.
/// Runs the commands of `file`, one a line.
fn batch(file: &std::path::Path) -> Result<(), Fail> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| Fail::Input(format!("{}: {e}", file.display())))?;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = |m: String| format!("{}:{}: {m}", file.display(), i + 1);
        let words = std::iter::once("nvme-cli").chain(line.split_whitespace());
        let cli = Cli::try_parse_from(words).map_err(|e| Fail::Input(at(e.to_string())))?;
        if matches!(cli.cmd, Cmd::Batch { .. }) {
            return Err(Fail::Input(at("a batch inside a batch".into())));
        }
        run(&cli).map_err(|e| match e {
            Fail::Input(m) => Fail::Input(at(m)),
            Fail::Device(m) => Fail::Device(at(m)),
        })?;
    }
    Ok(())
}

fn hexdump(data: &[u8]) {
    for (i, line) in data.chunks(16).enumerate() {
        let hex: Vec<String> = line.iter().map(|b| format!("{b:02x}")).collect();
        let text: String = line
            .iter()
            .map(|&b| {
                if b.is_ascii_graphic() || b == b' ' {
                    b as char
                } else {
                    '.'
                }
            })
            .collect();
        println!("{:04x}: {:<48} \"{text}\"", i * 16, hex.join(" "));
    }
}

fn hex_json(data: &[u8]) -> String {
    let mut s = String::with_capacity(data.len() * 2 + 2);
    s.push('"');
    for b in data {
        let _ = write!(s, "{b:02x}");
    }
    s.push('"');
    s
}

fn get_feature(ctrl: &Controller, a: &GetFeatureArgs, json: bool) -> Result<(), Fail> {
    use nvme_vfio::nvme::cmd::{admin, Command};
    if a.sel > 3 || a.data_len > 4096 {
        return Err(Fail::Input(
            "--sel is 0 to 3, --data-len at most 4096".into(),
        ));
    }
    let mut cmd = Command::new(admin::GET_FEATURES, a.nsid);
    cmd.cdw10 = u32::from(a.fid) | u32::from(a.sel) << 8;
    cmd.cdw11 = a.cdw11;
    let data = if a.data_len > 0 {
        Some((ctrl.dma_alloc(4096)?, 4096))
    } else {
        None
    };
    let (result, buf) = ctrl.admin_passthru(cmd, data)?;
    let bytes = buf.map(|b| b.as_slice()[..a.data_len].to_vec());
    if json {
        let data = bytes.as_deref().map_or("null".into(), hex_json);
        println!(
            "{{\"feature_id\":{},\"sel\":{},\"result\":{result},\"data\":{data}}}",
            a.fid, a.sel
        );
    } else {
        println!(
            "get-feature:{:#04x} (sel {}), Current value:{result:#010x}",
            a.fid, a.sel
        );
        if let Some(b) = &bytes {
            hexdump(b);
        }
    }
    Ok(())
}

fn set_feature(ctrl: &Controller, a: &SetFeatureArgs, json: bool) -> Result<(), Fail> {
    use nvme_vfio::nvme::cmd::{admin, Command};
    let mut cmd = Command::new(admin::SET_FEATURES, a.nsid);
    cmd.cdw10 = u32::from(a.fid) | u32::from(a.save) << 31;
    cmd.cdw11 = a.value;
    let (result, _) = ctrl.admin_passthru(cmd, None)?;
    if json {
        println!(
            "{{\"feature_id\":{},\"value\":{},\"save\":{},\"result\":{result}}}",
            a.fid, a.value, a.save
        );
    } else {
        println!(
            "set-feature:{:#04x}, value:{:#010x}, save:{}, result:{result:#010x}",
            a.fid, a.value, a.save
        );
    }
    Ok(())
}

fn get_log(ctrl: &Controller, a: &GetLogArgs, json: bool) -> Result<(), Fail> {
    let b = ctrl.get_log_page(a.lid, a.nsid, a.lsp, a.offset, a.len)?;
    if a.raw {
        std::io::stdout()
            .write_all(&b)
            .map_err(|e| Fail::Input(format!("stdout: {e}")))?;
    } else if json {
        println!(
            "{{\"log_id\":{},\"offset\":{},\"length\":{},\"data\":{}}}",
            a.lid,
            a.offset,
            b.len(),
            hex_json(&b)
        );
    } else {
        println!(
            "Device log page {:#04x} ({} bytes from {}):",
            a.lid,
            b.len(),
            a.offset
        );
        hexdump(&b);
    }
    Ok(())
}

fn error_log(ctrl: &Controller, entries: usize, json: bool) -> Result<(), Fail> {
    let log = ctrl.error_log(entries.clamp(1, 64))?;
    if json {
        let items: Vec<String> = log
            .iter()
            .map(|e| {
                format!(
                    "{{\"error_count\":{},\"sqid\":{},\"cmdid\":{},\"status\":{},\"nsid\":{},\"lba\":{},\"text\":{}}}",
                    e.error_count,
                    e.sqid,
                    e.cid,
                    e.status,
                    e.nsid,
                    e.lba,
                    js(&e.to_string())
                )
            })
            .collect();
        println!("{{\"errors\":[{}]}}", items.join(","));
    } else {
        println!("Error Log Entries for device ({} in use):", log.len());
        for e in &log {
            println!("  {e}");
        }
    }
    Ok(())
}

fn fw_log(ctrl: &Controller, json: bool) -> Result<(), Fail> {
    let f = ctrl.firmware_log()?;
    if json {
        let slots: Vec<String> = f
            .revisions
            .iter()
            .enumerate()
            .filter_map(|(i, r)| Some(format!("\"frs{}\":{}", i + 1, js(r.as_deref()?))))
            .collect();
        println!(
            "{{\"active_slot\":{},\"next_slot\":{},{}}}",
            f.active_slot,
            f.next_slot.map_or("null".into(), |n| n.to_string()),
            slots.join(",")
        );
    } else {
        println!("Firmware Log for device:");
        println!(
            "afi  : active slot {}, next {:?}",
            f.active_slot, f.next_slot
        );
        for (i, r) in f.revisions.iter().enumerate() {
            if let Some(r) = r {
                println!("frs{} : {r}", i + 1);
            }
        }
    }
    Ok(())
}

fn format(ctrl: &Controller, a: &FormatArgs, json: bool) -> Result<(), Fail> {
    if !a.yes {
        return Err(Fail::Input(format!(
            "format erases namespace {:#x}: add --yes to confirm",
            a.nsid
        )));
    }
    ctrl.format_nvm(a.nsid, a.lbaf, a.ses)?;
    if json {
        println!(
            "{{\"command\":\"format\",\"namespace\":{},\"lbaf\":{},\"ses\":{},\"status\":\"success\"}}",
            a.nsid, a.lbaf, a.ses
        );
    } else {
        eprintln!("format: success");
    }
    Ok(())
}

fn passthru(ctrl: &Controller, a: &PassthruArgs, io: bool, json: bool) -> Result<(), Fail> {
    use nvme_vfio::nvme::cmd::Command;
    let mut cmd = Command::new(a.opcode, a.nsid);
    (cmd.cdw10, cmd.cdw11, cmd.cdw12) = (a.cdw10, a.cdw11, a.cdw12);
    (cmd.cdw13, cmd.cdw14, cmd.cdw15) = (a.cdw13, a.cdw14, a.cdw15);
    if a.data_len > 0 && !a.read && !a.write {
        return Err(Fail::Input("--data-len needs --read or --write".into()));
    }
    let data = if a.data_len > 0 {
        let mut buf = ctrl.dma_alloc(a.data_len)?;
        if a.write {
            let mut input = Vec::new();
            match &a.input {
                Some(p) => std::fs::File::open(p).and_then(|mut f| f.read_to_end(&mut input)),
                None => std::io::stdin().read_to_end(&mut input),
            }
            .map_err(|e| Fail::Input(format!("input: {e}")))?;
            let n = input.len().min(a.data_len);
            buf.as_mut_slice()[..n].copy_from_slice(&input[..n]);
        }
        Some((buf, a.data_len))
    } else {
        None
    };
    let (result, buf) = if io {
        let ns = ctrl.namespace(a.nsid)?;
        let mut qp = ctrl.queue_pair(QueueConfig::default())?;
        (0, qp.io_passthru(&ns, cmd, data)?)
    } else {
        ctrl.admin_passthru(cmd, data)?
    };
    let read = buf
        .filter(|_| a.read)
        .map(|b| b.as_slice()[..a.data_len].to_vec());
    if a.raw {
        if let Some(b) = &read {
            std::io::stdout()
                .write_all(b)
                .map_err(|e| Fail::Input(format!("stdout: {e}")))?;
        }
    } else if json {
        let data = read.as_deref().map_or("null".into(), hex_json);
        println!(
            "{{\"opcode\":{},\"result\":{result},\"data\":{data}}}",
            a.opcode
        );
    } else {
        println!("NVMe command result:{result:08x}");
        if let Some(b) = &read {
            hexdump(b);
        }
    }
    Ok(())
}

fn show_regs(ctrl: &Controller, json: bool) -> Result<(), Fail> {
    let regs = ctrl.registers();
    if json {
        let items: Vec<String> = regs.iter().map(|(k, v)| format!("{}:{v}", js(k))).collect();
        println!("{{{}}}", items.join(","));
    } else {
        for (k, v) in &regs {
            println!("{k:<8}: {v:x}");
        }
    }
    Ok(())
}

fn done(json: bool, what: &str, ns: &Namespace, lba: u64, blocks: u64) {
    if json {
        println!(
            "{{\"command\":\"{what}\",\"namespace\":{},\"lba\":{lba},\"blocks\":{blocks},\"status\":\"success\"}}",
            ns.id()
        );
    } else {
        eprintln!("{what}: success");
    }
}

/// A JSON string literal.
fn js(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// The target of a sysfs symlink's last component.
fn link_name(path: PathBuf) -> Option<String> {
    let t = std::fs::read_link(path).ok()?;
    Some(t.file_name()?.to_string_lossy().into_owned())
}

/// One NVMe function (or `sim`) of `list`.
struct Function {
    address: String,
    driver: String,
    group: String,
    usable: bool,
    /// Opened: its identity and namespaces, or why it could not be opened
    /// or listed.
    ctrl: Option<Result<CtrlRows, String>>,
}

/// A controller's identity and namespaces, for `list`.
struct CtrlRows {
    model: String,
    serial: String,
    firmware: String,
    namespaces: Vec<NsRow>,
}

/// One namespace of `list`: its size and format, or why it has none.
struct NsRow {
    nsid: u32,
    command_set: CommandSet,
    usage: Result<NsUsage, String>,
}

struct NsUsage {
    nsze: u64,
    nuse: u64,
    block_size: u64,
    metadata: u16,
}

/// Bytes in decimal units, as `nvme list` shows them: "67.11 MB".
fn si(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < UNITS.len() {
        v /= 1000.0;
        i += 1;
    }
    format!("{v:.2} {}", UNITS[i])
}

/// A block or zone size in binary units when exact: "512 B", "4 KiB",
/// "1 MiB".
fn block_bytes(n: u64) -> String {
    let (mut v, mut unit) = (n, 0);
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    while v >= 1024 && v % 1024 == 0 && unit + 1 < UNITS.len() {
        v /= 1024;
        unit += 1;
    }
    format!("{v} {}", UNITS[unit])
}

/// The namespaces of an open controller, each failing on its own.
fn describe(ctrl: &Controller) -> Result<CtrlRows, String> {
    let id = ctrl.identify();
    let entries = ctrl.list_namespaces().map_err(|e| e.to_string())?;
    let namespaces = entries
        .into_iter()
        .map(|e| {
            let usage = ctrl
                .namespace_info(e.nsid)
                .map_err(|e| e.to_string())
                .and_then(|info| {
                    let id = info.identify.ok_or_else(|| {
                        format!("{} namespace: no block format", info.command_set)
                    })?;
                    let f = id
                        .current_lba_format()
                        .ok_or_else(|| "no current LBA format".to_string())?;
                    Ok(NsUsage {
                        nsze: id.nsze(),
                        nuse: id.nuse(),
                        block_size: f.block_size(),
                        metadata: f.metadata,
                    })
                });
            NsRow {
                nsid: e.nsid,
                command_set: e.command_set,
                usage,
            }
        })
        .collect();
    Ok(CtrlRows {
        model: id.model(),
        serial: id.serial(),
        firmware: id.firmware(),
        namespaces,
    })
}

/// The NVMe functions in sysfs: address, driver, IOMMU group, usable.
fn sysfs_functions() -> Result<Vec<Function>, Fail> {
    let mut rows = Vec::new();
    let entries = std::fs::read_dir("/sys/bus/pci/devices")?;
    for e in entries.flatten() {
        let dir = e.path();
        let class = std::fs::read_to_string(dir.join("class")).unwrap_or_default();
        if class.trim() != "0x010802" {
            continue;
        }
        let address = e.file_name().to_string_lossy().into_owned();
        let driver = link_name(dir.join("driver")).unwrap_or_else(|| "(none)".into());
        let group = link_name(dir.join("iommu_group"));
        let usable = driver == "vfio-pci"
            && group
                .as_ref()
                .is_some_and(|g| std::fs::metadata(format!("/dev/vfio/{g}")).is_ok());
        rows.push(Function {
            address,
            driver,
            group: group.unwrap_or_else(|| "-".into()),
            usable,
            ctrl: None,
        });
    }
    rows.sort_by(|a, b| a.address.cmp(&b.address));
    Ok(rows)
}

/// The function at `address` as sysfs describes it (or the `sim` device).
fn named_function(address: &str) -> Function {
    if address == "sim" || address.starts_with("sim:") {
        return Function {
            address: address.into(),
            driver: "nvme-sim".into(),
            group: "-".into(),
            usable: true,
            ctrl: None,
        };
    }
    let full = if address.matches(':').count() == 1 {
        format!("0000:{address}")
    } else {
        address.to_string()
    };
    let dir = PathBuf::from("/sys/bus/pci/devices").join(&full);
    let driver = link_name(dir.join("driver")).unwrap_or_else(|| "(none)".into());
    let group = link_name(dir.join("iommu_group")).unwrap_or_else(|| "-".into());
    Function {
        address: full,
        usable: driver == "vfio-pci",
        driver,
        group,
        ctrl: None,
    }
}

fn list(devices: &[String], json: bool) -> Result<(), Fail> {
    let mut rows = if devices.is_empty() {
        sysfs_functions()?
    } else {
        devices.iter().map(|d| named_function(d)).collect()
    };
    // Each usable controller is opened to read its namespaces; one that
    // cannot be (in use by another process, failing) is shown with the
    // reason, and the others are still listed.
    for f in &mut rows {
        if f.usable || !devices.is_empty() {
            f.ctrl = Some(match open(&f.address) {
                Ok(dev) => describe(&dev),
                Err(Fail::Input(m) | Fail::Device(m)) => Err(m),
            });
        }
    }
    if json {
        let items: Vec<String> = rows.iter().map(function_json).collect();
        println!("[{}]", items.join(","));
        return Ok(());
    }
    println!(
        "{:<14} {:<20} {:<24} {:<5} {:<21} {:<12} FW Rev",
        "Device", "SN", "Model", "NSID", "Usage", "Format"
    );
    println!(
        "{:-<14} {:-<20} {:-<24} {:-<5} {:-<21} {:-<12} {:-<8}",
        "", "", "", "", "", "", ""
    );
    for f in &rows {
        let a = &f.address;
        match &f.ctrl {
            None => println!(
                "{a:<14} (on {}, not vfio-pci: bind it with scripts/setup-vfio.sh bind)",
                f.driver
            ),
            Some(Err(e)) => println!("{a:<14} (cannot open: {e})"),
            Some(Ok(c)) if c.namespaces.is_empty() => {
                println!(
                    "{a:<14} {:<20} {:<24} (no active namespace)",
                    c.serial, c.model
                )
            }
            Some(Ok(c)) => {
                for n in &c.namespaces {
                    let (usage, format) = match &n.usage {
                        Ok(u) => (
                            format!(
                                "{} / {}",
                                si(u.nuse.saturating_mul(u.block_size)),
                                si(u.nsze.saturating_mul(u.block_size))
                            ),
                            format!("{} + {} B", block_bytes(u.block_size), u.metadata),
                        ),
                        Err(e) => (format!("({e})"), "-".into()),
                    };
                    println!(
                        "{a:<14} {:<20} {:<24} {:<5} {usage:<21} {format:<12} {}",
                        c.serial, c.model, n.nsid, c.firmware
                    );
                }
            }
        }
    }
    Ok(())
}

/// One function of `list --json`.
fn function_json(f: &Function) -> String {
    let mut o = format!(
        "{{\"address\":{},\"driver\":{},\"iommu_group\":{},\"usable\":{}",
        js(&f.address),
        js(&f.driver),
        js(&f.group),
        f.usable
    );
    match &f.ctrl {
        None => {}
        Some(Err(e)) => {
            let _ = write!(o, ",\"error\":{}", js(e));
        }
        Some(Ok(c)) => {
            let namespaces: Vec<String> = c
                .namespaces
                .iter()
                .map(|n| {
                    let head = format!(
                        "{{\"nsid\":{},\"command_set\":{},\"csi\":{}",
                        n.nsid,
                        js(&n.command_set.short_name()),
                        n.command_set.csi()
                    );
                    match &n.usage {
                        Ok(u) => format!(
                            "{head},\"nsze\":{},\"nuse\":{},\"block_size\":{},\"metadata\":{},\"size_bytes\":{},\"used_bytes\":{}}}",
                            u.nsze,
                            u.nuse,
                            u.block_size,
                            u.metadata,
                            u.nsze.saturating_mul(u.block_size),
                            u.nuse.saturating_mul(u.block_size)
                        ),
                        Err(e) => format!("{head},\"error\":{}}}", js(e)),
                    }
                })
                .collect();
            let _ = write!(
                o,
                ",\"model\":{},\"serial\":{},\"firmware\":{},\"namespaces\":[{}]",
                js(&c.model),
                js(&c.serial),
                js(&c.firmware),
                namespaces.join(",")
            );
        }
    }
    o.push('}');
    o
}

/// A command set given by name or number.
fn parse_csi(s: &str) -> Result<CommandSet, Fail> {
    Ok(match s {
        "nvm" => CommandSet::Nvm,
        "key-value" | "kv" => CommandSet::KeyValue,
        "zoned" | "zns" => CommandSet::Zoned,
        n => CommandSet::from_csi(n.parse().map_err(|_| {
            Fail::Input(format!(
                "--csi: '{n}' is not nvm, key-value, zoned or a number 0 to 255"
            ))
        })?),
    })
}

fn list_ns(ctrl: &Controller, csi: Option<CommandSet>, json: bool) -> Result<(), Fail> {
    let entries: Vec<(u32, CommandSet)> = match csi {
        None => ctrl
            .list_namespaces()?
            .into_iter()
            .map(|e| (e.nsid, e.command_set))
            .collect(),
        // Without I/O command sets every namespace is an NVM one.
        Some(CommandSet::Nvm) if !ctrl.io_command_sets() => ctrl
            .active_namespaces()?
            .into_iter()
            .map(|id| (id, CommandSet::Nvm))
            .collect(),
        Some(cs) => ctrl
            .active_namespaces_of(cs)?
            .into_iter()
            .map(|id| (id, cs))
            .collect(),
    };
    if json {
        let items: Vec<String> = entries
            .iter()
            .map(|(id, cs)| {
                format!(
                    "{{\"nsid\":{id},\"command_set\":{},\"csi\":{}}}",
                    js(&cs.short_name()),
                    cs.csi()
                )
            })
            .collect();
        println!("{{\"namespaces\":[{}]}}", items.join(","));
    } else {
        for (i, (id, cs)) in entries.iter().enumerate() {
            println!("[{i:>4}]:{id:#x} {}", cs.short_name());
        }
    }
    Ok(())
}

fn id_ctrl(ctrl: &Controller, json: bool) -> Result<(), Fail> {
    let id = ctrl.identify();
    let fields: [(&str, String, bool); 14] = [
        ("vid", format!("{:#06x}", id.vid()), false),
        ("sn", id.serial(), true),
        ("mn", id.model(), true),
        ("fr", id.firmware(), true),
        ("mdts", id.mdts().to_string(), false),
        ("cntlid", id.cntlid().to_string(), false),
        ("ver", format!("{:#x}", id.ver()), false),
        ("oacs", format!("{:#x}", id.oacs()), false),
        ("sqes", format!("{:#x}", id.sqes()), false),
        ("cqes", format!("{:#x}", id.cqes()), false),
        ("nn", id.nn().to_string(), false),
        ("oncs", format!("{:#x}", id.oncs()), false),
        ("vwc", format!("{:#x}", id.vwc()), false),
        ("sgls", format!("{:#x}", id.sgls()), false),
    ];
    if json {
        let numeric = |k: &str| -> u64 {
            match k {
                "vid" => id.vid().into(),
                "mdts" => id.mdts().into(),
                "cntlid" => id.cntlid().into(),
                "ver" => id.ver().into(),
                "oacs" => id.oacs().into(),
                "sqes" => id.sqes().into(),
                "cqes" => id.cqes().into(),
                "nn" => id.nn().into(),
                "oncs" => id.oncs().into(),
                "vwc" => id.vwc().into(),
                _ => id.sgls().into(),
            }
        };
        let items: Vec<String> = fields
            .iter()
            .map(|(k, v, s)| {
                if *s {
                    format!("{}:{}", js(k), js(v))
                } else {
                    format!("{}:{}", js(k), numeric(k))
                }
            })
            .collect();
        println!("{{{}}}", items.join(","));
    } else {
        println!("NVME Identify Controller:");
        for (k, v, _) in &fields {
            println!("{k:<9} : {v}");
        }
    }
    Ok(())
}

fn id_ns(ctrl: &Controller, nsid: u32, json: bool) -> Result<(), Fail> {
    let info = ctrl.namespace_info(nsid)?;
    let cs = info.command_set;
    let zones = info.zones();
    let Some(id) = &info.identify else {
        // A command set Identify Namespace does not describe.
        if json {
            println!(
                "{{\"nsid\":{nsid},\"command_set\":{},\"csi\":{}}}",
                js(&cs.short_name()),
                cs.csi()
            );
        } else {
            println!("NVME Identify Namespace {nsid}:");
            println!("csi     : {} ({cs})", cs.csi());
        }
        return Ok(());
    };
    let cur = id.current_format();
    // FLBAS as Identify has it: the format index (bits 3:0, and 6:5 for
    // indexes from 16) and bit 4, extended LBAs.
    let flbas = (cur & 0xf) | (cur >> 4) << 5 | usize::from(id.extended_lba()) << 4;
    // The current format's protection information (its guard from the NVM
    // command set's Identify Namespace, which the driver reads on open).
    let pi = match cs {
        CommandSet::Nvm | CommandSet::Zoned if id.dps() & 0x7 != 0 => ctrl
            .namespace(nsid)
            .ok()
            .and_then(|ns| ns.protection_info()),
        _ => None,
    };
    let block_size = id.current_lba_format().map_or(0, |f| f.block_size());
    let formats: Vec<_> = (0..id.lba_formats())
        .filter_map(|i| id.lba_format(i).map(|f| (i, f)))
        .collect();
    let limit = |v: Option<u32>| v.map_or("null".to_string(), |n| n.to_string());
    if json {
        let lbafs: Vec<String> = formats
            .iter()
            .map(|(i, f)| {
                format!(
                    "{{\"index\":{i},\"ms\":{},\"ds\":{},\"rp\":{},\"in_use\":{}}}",
                    f.metadata,
                    f.lbads,
                    f.rp,
                    *i == cur
                )
            })
            .collect();
        let zoned = match &zones {
            Some(z) => format!(
                ",\"zoned\":{{\"zone_size\":{},\"zone_bytes\":{},\"max_open\":{},\"max_active\":{}}}",
                z.zone_blocks(),
                z.zone_blocks().saturating_mul(block_size),
                limit(z.max_open()),
                limit(z.max_active())
            ),
            None => String::new(),
        };
        let pi_json = match pi {
            Some(p) => format!(
                "{{\"type\":{},\"first\":{},\"guard_bits\":{},\"pif\":{}}}",
                p.kind.dps(),
                p.first,
                pi_guard_bits(p.guard),
                p.guard.pif()
            ),
            None => "null".into(),
        };
        println!(
            "{{\"nsid\":{nsid},\"nsze\":{},\"ncap\":{},\"nuse\":{},\"block_size\":{block_size},\"command_set\":{},\"csi\":{},\"flbas\":{flbas},\"mc\":{},\"dpc\":{},\"dps\":{},\"metadata_size\":{},\"extended_lba\":{},\"pi\":{pi_json},\"lbafs\":[{}]{zoned}}}",
            id.nsze(),
            id.ncap(),
            id.nuse(),
            js(&cs.short_name()),
            cs.csi(),
            id.mc(),
            id.dpc(),
            id.dps(),
            id.current_lba_format().map_or(0, |f| f.metadata),
            id.extended_lba(),
            lbafs.join(",")
        );
    } else {
        let limit = |v: Option<u32>, what: &str| {
            v.map_or("no limit".to_string(), |n| {
                format!("{n} {what} zones at most")
            })
        };
        println!("NVME Identify Namespace {nsid}:");
        println!("nsze    : {:#x}", id.nsze());
        println!("ncap    : {:#x}", id.ncap());
        println!("nuse    : {:#x}", id.nuse());
        println!("csi     : {} ({cs})", cs.csi());
        if let Some(z) = &zones {
            println!(
                "zsze    : {:#x} ({} blocks, {})",
                z.zone_blocks(),
                z.zone_blocks(),
                block_bytes(z.zone_blocks().saturating_mul(block_size))
            );
            println!("mor     : {}", limit(z.max_open(), "open"));
            println!("mar     : {}", limit(z.max_active(), "active"));
        } else if cs == CommandSet::Zoned {
            println!("zsze    : (not reported)");
        }
        println!("nlbaf   : {}", id.lba_formats() - 1);
        println!("flbas   : {flbas:#x}");
        println!("mc      : {:#x}", id.mc());
        println!("dpc     : {:#x}", id.dpc());
        println!("dps     : {:#x}", id.dps());
        if let Some(p) = pi {
            // nvme-cli's --human-readable lines for DPS, and the guard of
            // the current format (its extended LBA format's PIF).
            let (bit3, place) = match p.first {
                true => (1, "First"),
                false => (0, "Last"),
            };
            println!(
                "  [3:3] : {bit3}\tProtection Information Transferred as {place} Bytes of Metadata"
            );
            println!(
                "  [2:0] : {:#x}\tProtection Information Type {} Enabled",
                p.kind.dps(),
                p.kind.dps()
            );
            println!(
                "  guard : {}-bit ({}), pif:{}",
                pi_guard_bits(p.guard),
                match p.guard {
                    nvme_vfio::ctrl::Guard::Crc16 => "CRC-16 T10-DIF",
                    _ => "CRC-64 NVMe",
                },
                p.guard.pif()
            );
        }
        for (i, f) in &formats {
            let used = if *i == cur { " (in use)" } else { "" };
            println!(
                "lbaf {i:>2} : ms:{:<3} lbads:{:<2} rp:{}{used}",
                f.metadata, f.lbads, f.rp
            );
        }
    }
    Ok(())
}

/// The bits of a protection information guard.
fn pi_guard_bits(g: nvme_vfio::ctrl::Guard) -> usize {
    match g {
        nvme_vfio::ctrl::Guard::Crc16 => 16,
        _ => 64,
    }
}

/// Prints `done` of `total` bytes on a terminal, for large transfers.
fn progress(done: u64, total: u64) {
    if total > PROGRESS_ABOVE && std::io::stderr().is_terminal() {
        eprint!(
            "\r{:>8.1} / {:.1} MiB",
            done as f64 / 1048576.0,
            total as f64 / 1048576.0
        );
        if done == total {
            eprintln!();
        }
    }
}

fn read(a: &ReadArgs) -> Result<(), Fail> {
    let ctrl = open(&a.ns.device)?;
    let ns = ctrl.namespace(a.ns.nsid)?;
    let bs = ns.block_size();
    let plan = a.meta.plan(&ns)?;
    // Bytes per block in the output: with extended LBAs, data and metadata.
    let stride = plan.stride;
    let bytes = match (a.blocks, a.size) {
        (Some(b), None) => b
            .checked_mul(stride)
            .ok_or_else(|| Fail::Input("block count too large".into()))?,
        (None, Some(z)) if z % stride == 0 => z,
        (None, Some(z)) if stride != bs => {
            return Err(Fail::Input(format!(
                "size {z} is not a multiple of {stride} bytes per block ({bs} of data and {} of metadata)",
                stride - bs
            )))
        }
        (None, Some(z)) => {
            return Err(Fail::Input(format!(
                "size {z} is not a multiple of the {bs}-byte block size"
            )))
        }
        _ => return Err(Fail::Input("give --blocks or --size".into())),
    };
    let blocks = bytes / stride;
    check_range(&ns, a.lba, blocks)?;
    let mut out: Box<dyn Write> = match &a.output {
        Some(p) => Box::new(std::fs::File::create(p)?),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut meta_out = match &a.meta.metadata {
        Some(p) => Some(std::fs::File::create(p)?),
        None => None,
    };
    let mut qp = ctrl.queue_pair(QueueConfig::default())?;
    // Blocks per call.
    let chunk = chunk_len(&ctrl, bs) as u64 / bs;
    let mut buf = ctrl.dma_alloc((chunk * bs) as usize)?;
    let mut meta = vec![0u8; (chunk * plan.meta_stride) as usize];
    let mut data = match ns.has_metadata() {
        true => vec![0u8; (chunk * stride) as usize],
        false => Vec::new(),
    };
    let mut done = 0u64;
    // A zoned namespace may not take reads across zone boundaries: its
    // reads end at each one.
    let zone = ns
        .zones()
        .filter(|z| !z.reads_cross_zones())
        .map(|z| z.zone_blocks());
    while done < blocks {
        let at = a.lba + done;
        let mut n = (blocks - done).min(chunk);
        if let Some(zb) = zone {
            n = n.min(zb - at % zb);
        }
        let len = (n * stride) as usize;
        if ns.has_metadata() {
            let m = &mut meta[..(n * plan.meta_stride) as usize];
            qp.read_with_metadata(&ns, at, &mut data[..len], m, plan.protection)?;
            out.write_all(&data[..len])?;
            if let Some(f) = meta_out.as_mut() {
                f.write_all(m)?;
            }
        } else {
            qp.read(&ns, at, &mut buf.as_mut_slice()[..len])?;
            out.write_all(&buf.as_slice()[..len])?;
        }
        done += n;
        progress(done * stride, bytes);
    }
    out.flush()?;
    Ok(())
}

fn write(a: &WriteArgs) -> Result<(), Fail> {
    if !a.yes {
        return Err(Fail::Input(
            "write overwrites the namespace's data: add --yes to confirm".into(),
        ));
    }
    let mut data = Vec::new();
    match &a.input {
        Some(p) => std::fs::File::open(p)
            .map_err(|e| Fail::Input(format!("{}: {e}", p.display())))?
            .read_to_end(&mut data)?,
        None => std::io::stdin().lock().read_to_end(&mut data)?,
    };
    if data.is_empty() {
        return Err(Fail::Input("nothing to write (empty input)".into()));
    }
    let meta = match &a.meta.metadata {
        Some(p) => metadata::read_file(p)?,
        None => Vec::new(),
    };
    let ctrl = open(&a.ns.device)?;
    let ns = ctrl.namespace(a.ns.nsid)?;
    let plan = a.meta.plan(&ns)?;
    let bs = ns.block_size() as usize;
    let stride = plan.stride as usize;
    if data.len() % stride != 0 {
        if !a.pad {
            let what = match stride == bs {
                true => format!("the {bs}-byte block size"),
                false => format!(
                    "{stride} bytes per block ({bs} of data and {} of metadata)",
                    stride - bs
                ),
            };
            return Err(Fail::Input(format!(
                "input of {} bytes is not a multiple of {what} (--pad pads it with zeroes)",
                data.len()
            )));
        }
        data.resize(data.len().next_multiple_of(stride), 0);
    }
    let blocks = (data.len() / stride) as u64;
    if let Some(p) = &a.meta.metadata {
        metadata::check_len(p, meta.len(), blocks, &plan)?;
    }
    // The whole range is checked before the first block is written.
    check_range(&ns, a.lba, blocks)?;
    let mut qp = ctrl.queue_pair(QueueConfig::default())?;
    let total = data.len() as u64;
    let per_call = chunk_len(&ctrl, bs as u64) / bs;
    let ms = plan.meta_stride as usize;
    for (i, chunk) in data.chunks(per_call * stride).enumerate() {
        let lba = a.lba + (i * per_call) as u64;
        if ns.has_metadata() {
            let n = chunk.len() / stride;
            let m = match ms {
                0 => &[][..],
                _ => &meta[i * per_call * ms..][..n * ms],
            };
            qp.write_with_metadata(&ns, lba, chunk, m, plan.protection, false)?;
        } else {
            qp.write(&ns, lba, chunk, false)?;
        }
        progress(((i * per_call * stride) + chunk.len()) as u64, total);
    }
    qp.flush_cache(&ns)?;
    eprintln!("write: {blocks} blocks at LBA {}: success", a.lba);
    Ok(())
}

fn check_range(ns: &Namespace, lba: u64, blocks: u64) -> Result<(), Fail> {
    if blocks == 0 {
        return Err(Fail::Input("zero blocks".into()));
    }
    if lba.checked_add(blocks).is_none_or(|e| e > ns.blocks()) {
        return Err(Fail::Input(format!(
            "LBA range {lba}+{blocks} is past the end of namespace {} ({} blocks)",
            ns.id(),
            ns.blocks()
        )));
    }
    Ok(())
}

fn smart_log(ctrl: &Controller, json: bool) -> Result<(), Fail> {
    let s = ctrl.smart_log()?;
    let fields: [(&str, u64); 13] = [
        ("critical_warning", s.critical_warning.into()),
        ("temperature", s.temperature_k.into()),
        ("avail_spare", s.available_spare.into()),
        ("spare_thresh", s.spare_threshold.into()),
        ("percent_used", s.percentage_used.into()),
        ("data_units_read", s.data_units_read),
        ("data_units_written", s.data_units_written),
        ("host_read_commands", s.host_read_commands),
        ("host_write_commands", s.host_write_commands),
        ("power_cycles", s.power_cycles),
        ("power_on_hours", s.power_on_hours),
        ("unsafe_shutdowns", s.unsafe_shutdowns),
        ("media_errors", s.media_errors),
    ];
    if json {
        let items: Vec<String> = fields
            .iter()
            .map(|(k, v)| format!("{}:{v}", js(k)))
            .collect();
        println!("{{{}}}", items.join(","));
    } else {
        println!("Smart Log for NVME device:");
        for (k, v) in &fields {
            if *k == "temperature" {
                println!("{k:<20} : {v} K ({} °C)", *v as i64 - 273);
            } else {
                println!("{k:<20} : {v}");
            }
        }
    }
    Ok(())
}

/// The message of a device error: a failed command's error log entry (the
/// end of its message, `; error log entry ...`) on a line of its own.
fn device_message(e: &nvme_vfio::Error) -> String {
    let text = e.to_string();
    if e.error_log().is_none() {
        return text;
    }
    match text.rsplit_once("; error log entry ") {
        Some((head, entry)) => format!("{head}\n  error log entry {entry}"),
        None => text,
    }
}
