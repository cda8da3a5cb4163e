//! An nvme-cli-like tool on the userspace driver: list NVMe functions,
//! identify, read and write blocks, flush, trim, write zeroes, SMART log.
//!
//! ```text
//! cargo run --release --example nvme-cli -- list
//! cargo run --release --example nvme-cli -- id-ctrl 0000:01:00.0
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
//! naming LBA (to see how a failed command is reported).
//!
//! A command that fails with the More bit set is reported with the
//! controller's Error Information log entry for it, on a line of its own.

use std::fmt::Write as _;
use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use nvme_vfio::ctrl::{Config, Controller, Namespace, QueueConfig};
use nvme_vfio::nvme::identify::IdentifyNamespace;

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
    /// List NVMe PCI functions: address, driver, IOMMU group, usable.
    List,
    /// Identify Controller.
    IdCtrl {
        /// PCI address (0000:01:00.0 or 01:00.0), bound to vfio-pci.
        device: String,
    },
    /// Identify Namespace.
    IdNs(NsArg),
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
    /// SMART / health log.
    SmartLog {
        /// PCI address.
        device: String,
    },
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
    #[arg(short = 'y', long)]
    yes: bool,
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
            nvme_vfio::Error::NoNamespace { .. } => Fail::Input(e.to_string()),
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
    _sim: Option<nvme_sim::SimController>,
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
    if device == "sim" {
        return open_sim(config);
    }
    let ctrl = Controller::open(device, config).map_err(|e| match e {
        nvme_vfio::Error::Vfio(v) => Fail::Input(v.to_string()),
        e => Fail::Device(e.to_string()),
    })?;
    Ok(Device { ctrl, _sim: None })
}

fn open_sim(config: Config) -> Result<Device, Fail> {
    use nvme_vfio::mem::{DmaSpace, SpaceConfig};
    let sim = nvme_sim::SimController::new(nvme_sim::Config::default())
        .map_err(|e| Fail::Device(e.to_string()))?;
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
        _sim: Some(sim),
    })
}

fn run(cli: &Cli) -> Result<(), Fail> {
    match &cli.cmd {
        Cmd::List => list(cli.json),
        Cmd::IdCtrl { device } => id_ctrl(&*open(device)?, cli.json),
        Cmd::IdNs(a) => id_ns(&*open(&a.device)?, a.nsid, cli.json),
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
        Cmd::SmartLog { device } => smart_log(&*open(device)?, cli.json),
    }
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

fn list(json: bool) -> Result<(), Fail> {
    let mut rows = Vec::new();
    let entries = std::fs::read_dir("/sys/bus/pci/devices")?;
    for e in entries.flatten() {
        let dir = e.path();
        let class = std::fs::read_to_string(dir.join("class")).unwrap_or_default();
        if class.trim() != "0x010802" {
            continue;
        }
        let addr = e.file_name().to_string_lossy().into_owned();
        let driver = link_name(dir.join("driver")).unwrap_or_else(|| "(none)".into());
        let group = link_name(dir.join("iommu_group"));
        let usable = driver == "vfio-pci"
            && group
                .as_ref()
                .is_some_and(|g| std::fs::metadata(format!("/dev/vfio/{g}")).is_ok());
        rows.push((addr, driver, group.unwrap_or_else(|| "-".into()), usable));
    }
    rows.sort();
    if json {
        let items: Vec<String> = rows
            .iter()
            .map(|(a, d, g, u)| {
                format!(
                    "{{\"address\":{},\"driver\":{},\"iommu_group\":{},\"usable\":{u}}}",
                    js(a),
                    js(d),
                    js(g)
                )
            })
            .collect();
        println!("[{}]", items.join(","));
    } else {
        println!("{:<14} {:<10} {:<6} usable", "address", "driver", "group");
        for (a, d, g, u) in &rows {
            println!(
                "{a:<14} {d:<10} {g:<6} {}",
                if *u {
                    "yes"
                } else {
                    "no (bind it: scripts/setup-vfio.sh bind)"
                }
            );
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
    let ns = ctrl.namespace(nsid)?;
    let id: IdentifyNamespace = ctrl.identify_namespace(nsid)?;
    let cur = id.current_format();
    let formats: Vec<_> = (0..id.lba_formats())
        .filter_map(|i| id.lba_format(i).map(|f| (i, f)))
        .collect();
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
        println!(
            "{{\"nsid\":{nsid},\"nsze\":{},\"ncap\":{},\"block_size\":{},\"flbas\":{cur},\"lbafs\":[{}]}}",
            id.nsze(),
            id.ncap(),
            ns.block_size(),
            lbafs.join(",")
        );
    } else {
        println!("NVME Identify Namespace {nsid}:");
        println!("nsze    : {:#x}", id.nsze());
        println!("ncap    : {:#x}", id.ncap());
        println!("nlbaf   : {}", id.lba_formats() - 1);
        println!("flbas   : {cur:#x}");
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
    let bytes = match (a.blocks, a.size) {
        (Some(b), None) => b
            .checked_mul(bs)
            .ok_or_else(|| Fail::Input("block count too large".into()))?,
        (None, Some(z)) if z % bs == 0 => z,
        (None, Some(z)) => {
            return Err(Fail::Input(format!(
                "size {z} is not a multiple of the {bs}-byte block size"
            )))
        }
        _ => return Err(Fail::Input("give --blocks or --size".into())),
    };
    check_range(&ns, a.lba, bytes / bs)?;
    let mut out: Box<dyn Write> = match &a.output {
        Some(p) => Box::new(std::fs::File::create(p)?),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut qp = ctrl.queue_pair(QueueConfig::default())?;
    let chunk = chunk_len(&ctrl, bs);
    let mut buf = ctrl.dma_alloc(chunk)?;
    let mut done = 0u64;
    while done < bytes {
        let n = (bytes - done).min(chunk as u64) as usize;
        qp.read(&ns, a.lba + done / bs, &mut buf.as_mut_slice()[..n])?;
        out.write_all(&buf.as_slice()[..n])?;
        done += n as u64;
        progress(done, bytes);
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
    let ctrl = open(&a.ns.device)?;
    let ns = ctrl.namespace(a.ns.nsid)?;
    let bs = ns.block_size() as usize;
    if data.len() % bs != 0 {
        if !a.pad {
            return Err(Fail::Input(format!(
                "input of {} bytes is not a multiple of the {bs}-byte block size (--pad pads it with zeroes)",
                data.len()
            )));
        }
        data.resize(data.len().next_multiple_of(bs), 0);
    }
    // The whole range is checked before the first block is written.
    check_range(&ns, a.lba, (data.len() / bs) as u64)?;
    let mut qp = ctrl.queue_pair(QueueConfig::default())?;
    let total = data.len() as u64;
    let per_call = chunk_len(&ctrl, bs as u64);
    for (i, chunk) in data.chunks(per_call).enumerate() {
        qp.write(&ns, a.lba + (i * per_call / bs) as u64, chunk, false)?;
        progress(((i * per_call) + chunk.len()) as u64, total);
    }
    qp.flush_cache(&ns)?;
    eprintln!(
        "write: {} blocks at LBA {}: success",
        data.len() / bs,
        a.lba
    );
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
