//! nvme-cli's `zns` plugin subcommands: report-zones (nvme-cli's text and
//! `--json`), reset-zone, open-zone, close-zone, finish-zone and
//! offline-zone (`-s/--start-lba`, `-a/--select-all`; reset-zone and
//! offline-zone destroy data, and ask for `--yes` as trim does here), and
//! zone-append (`-s/--zslba`, `-z/--data-size`, `-d/--data`), which prints
//! the LBA the data landed at.

use std::io::Read;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use nvme_vfio::ctrl::{Namespace, QueueConfig, ReportFilter, ZoneAction, ZoneDescriptor};

use super::{js, num, num8, open, Device, Fail, NsArg};

#[derive(Subcommand)]
pub enum ZnsCmd {
    /// Report Zones: "nr_zones: N", then one line per zone (start, write
    /// pointer, capacity, state, type, attributes).
    ReportZones(ReportArgs),
    /// Reset Zone: the zone becomes empty, its data gone (reads as
    /// zeroes).
    ResetZone(ActionArgs),
    /// Open Zone: the zone becomes explicitly opened.
    OpenZone(ActionArgs),
    /// Close Zone: an open zone becomes closed.
    CloseZone(ActionArgs),
    /// Finish Zone: the zone becomes full.
    FinishZone(ActionArgs),
    /// Offline Zone: a read-only zone becomes offline.
    OfflineZone(ActionArgs),
    /// Zone Append: the data is written at the zone's write pointer;
    /// prints the LBA it landed at.
    ZoneAppend(AppendArgs),
}

#[derive(Args)]
pub struct ReportArgs {
    #[command(flatten)]
    ns: NsArg,
    /// Report from the zone holding this LBA.
    #[arg(short = 's', long = "start-lba", value_parser = num, default_value = "0")]
    start: u64,
    /// At most this many zones (default: every one).
    #[arg(short = 'd', long = "descs", value_parser = num)]
    descs: Option<u64>,
    /// Only zones in this state: 0 all, 1 empty, 2 implicitly opened, 3
    /// explicitly opened, 4 closed, 5 full, 6 read only, 7 offline.
    #[arg(short = 'S', long = "state", value_parser = num8, default_value = "0")]
    state: u8,
    /// Accepted for nvme-cli's sake: reports are always read with Partial
    /// Report, as many commands as the zones take.
    #[arg(short = 'p', long = "partial")]
    partial: bool,
}

#[derive(Args)]
pub struct ActionArgs {
    #[command(flatten)]
    ns: NsArg,
    /// The zone's start LBA.
    #[arg(short = 's', long = "start-lba", value_parser = num, default_value = "0")]
    start: u64,
    /// Every zone the action applies to (the start LBA is ignored).
    #[arg(short = 'a', long = "select-all")]
    all: bool,
    /// Confirm destroying data (reset-zone, offline-zone).
    #[arg(short = 'y', long)]
    yes: bool,
}

#[derive(Args)]
pub struct AppendArgs {
    #[command(flatten)]
    ns: NsArg,
    /// The zone's start LBA.
    #[arg(short = 's', long = "zslba", value_parser = num)]
    zslba: u64,
    /// Bytes to append, whole blocks (default: the whole data file).
    #[arg(short = 'z', long = "data-size", value_parser = num)]
    size: Option<u64>,
    /// The data (default: stdin).
    #[arg(short = 'd', long = "data")]
    data: Option<PathBuf>,
}

pub fn run(cmd: &ZnsCmd, json: bool) -> Result<(), Fail> {
    match cmd {
        ZnsCmd::ReportZones(a) => report(a, json),
        ZnsCmd::ResetZone(a) => action(a, ZoneAction::Reset, "reset-zone", json),
        ZnsCmd::OpenZone(a) => action(a, ZoneAction::Open, "open-zone", json),
        ZnsCmd::CloseZone(a) => action(a, ZoneAction::Close, "close-zone", json),
        ZnsCmd::FinishZone(a) => action(a, ZoneAction::Finish, "finish-zone", json),
        ZnsCmd::OfflineZone(a) => action(a, ZoneAction::Offline, "offline-zone", json),
        ZnsCmd::ZoneAppend(a) => append(a, json),
    }
}

/// The device and zoned namespace `a` names.
fn zoned(a: &NsArg) -> Result<(Device, Namespace), Fail> {
    let ctrl = open(&a.device)?;
    let ns = ctrl.namespace(a.nsid)?;
    if !ns.is_zoned() {
        return Err(Fail::Input(format!(
            "namespace {} is not zoned (its command set is {})",
            ns.id(),
            ns.command_set()
        )));
    }
    Ok((ctrl, ns))
}

fn report(a: &ReportArgs, json: bool) -> Result<(), Fail> {
    let filter = ReportFilter::from_zrasf(a.state).ok_or_else(|| {
        Fail::Input(format!(
            "--state {}: 0 to 7 (all, empty, implicitly opened, explicitly opened, closed, \
             full, read only, offline)",
            a.state
        ))
    })?;
    let _ = a.partial;
    let (ctrl, ns) = zoned(&a.ns)?;
    super::check_range(&ns, a.start, 1)?;
    let max = a
        .descs
        .map_or(usize::MAX, |d| usize::try_from(d).unwrap_or(usize::MAX));
    let zones = ctrl
        .queue_pair(QueueConfig::default())?
        .report_zones(&ns, a.start, filter, max)?;
    if json {
        let items: Vec<String> = zones.iter().map(zone_json).collect();
        println!(
            "{{\"nr_zones\":{},\"zone_list\":[{}]}}",
            zones.len(),
            items.join(",")
        );
        return Ok(());
    }
    println!("nr_zones: {}", zones.len());
    for z in &zones {
        println!(
            "SLBA: {:<#10x} WP: {:<#10x} Cap: {:<#10x} State: {:<12} Type: {:<14} Attrs: {:#x}",
            z.start,
            z.write_pointer,
            z.capacity,
            z.state.cli_name(),
            z.zone_type.cli_name(),
            z.attributes.0
        );
    }
    Ok(())
}

fn zone_json(z: &ZoneDescriptor) -> String {
    format!(
        "{{\"slba\":{},\"wp\":{},\"cap\":{},\"state\":{},\"type\":{},\"attrs\":{}}}",
        z.start,
        z.write_pointer,
        z.capacity,
        js(z.state.cli_name()),
        js(z.zone_type.cli_name()),
        z.attributes.0
    )
}

fn action(a: &ActionArgs, action: ZoneAction, what: &str, json: bool) -> Result<(), Fail> {
    let destroys = matches!(action, ZoneAction::Reset | ZoneAction::Offline);
    if destroys && !a.yes {
        return Err(Fail::Input(format!(
            "{what} destroys the zone's data: add --yes to confirm"
        )));
    }
    let (ctrl, ns) = zoned(&a.ns)?;
    let mut qp = ctrl.queue_pair(QueueConfig::default())?;
    if a.all {
        qp.zone_action_all(&ns, action)?;
    } else {
        qp.zone_action(&ns, a.start, action)?;
    }
    let zone = if a.all { 0 } else { a.start };
    if json {
        println!(
            "{{\"command\":\"{what}\",\"namespace\":{},\"zone\":{zone},\"select_all\":{},\"action\":{},\"status\":\"success\"}}",
            ns.id(),
            a.all,
            action.zsa()
        );
    } else {
        println!(
            "{what}: Success, action:{} zone:{zone:x} all:{} nsid:{}",
            action.zsa(),
            u8::from(a.all),
            ns.id()
        );
    }
    Ok(())
}

fn append(a: &AppendArgs, json: bool) -> Result<(), Fail> {
    let mut data = Vec::new();
    match &a.data {
        Some(p) => std::fs::File::open(p)
            .and_then(|mut f| f.read_to_end(&mut data))
            .map_err(|e| Fail::Input(format!("{}: {e}", p.display())))?,
        None => std::io::stdin().lock().read_to_end(&mut data)?,
    };
    let (ctrl, ns) = zoned(&a.ns)?;
    let bs = ns.block_size();
    let len = a.size.unwrap_or(data.len() as u64);
    if len == 0 || len % bs != 0 {
        return Err(Fail::Input(format!(
            "data size {len:#x} is not a non-zero multiple of the {bs}-byte block size"
        )));
    }
    if (data.len() as u64) < len {
        return Err(Fail::Input(format!(
            "the data holds {} bytes, --data-size asks for {len}",
            data.len()
        )));
    }
    let mut qp = ctrl.queue_pair(QueueConfig::default())?;
    let lba = qp.zone_append(&ns, a.zslba, &data[..len as usize], false)?;
    if json {
        println!(
            "{{\"command\":\"zone-append\",\"namespace\":{},\"zslba\":{},\"lba\":{lba},\"blocks\":{},\"status\":\"success\"}}",
            ns.id(),
            a.zslba,
            len / bs
        );
    } else {
        println!("Success appended data to LBA {lba:#x}");
    }
    Ok(())
}
