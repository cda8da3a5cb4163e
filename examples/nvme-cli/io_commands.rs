//! nvme-cli's subcommands for the optional commands of the NVM command
//! set: compare, verify, write-uncor, copy and dsm, with nvme-cli's option
//! names and its 0-based block counts where nvme-cli has them
//! (`--block-count` of compare, verify and write-uncor, `--blocks` of
//! copy), and its messages.

use std::io::Read;
use std::path::PathBuf;

use clap::Args;
use nvme_vfio::ctrl::{CopyRange, DsmAttributes, DsmRange, Namespace, QueueConfig};

use super::{done, js, num, num32, open, Device, Fail, NsArg};

/// A comma-separated list of numbers (decimal or 0x-prefixed hex).
#[derive(Clone, Debug)]
pub struct List(Vec<u64>);

fn list(s: &str) -> Result<List, String> {
    s.split(',')
        .map(|v| num(v.trim()))
        .collect::<Result<_, _>>()
        .map(List)
}

/// Blocks from nvme-cli's 0-based count.
fn from_zero_based(count: u64) -> Result<u64, Fail> {
    count
        .checked_add(1)
        .ok_or_else(|| Fail::Input(format!("block count {count} is too large")))
}

#[derive(Args)]
pub struct CompareArgs {
    #[command(flatten)]
    ns: NsArg,
    /// First logical block.
    #[arg(short = 's', long = "start-block", value_parser = num)]
    start: u64,
    /// Number of blocks, 0-based as in nvme-cli (0 is one block); default:
    /// the data's length.
    #[arg(short = 'c', long = "block-count", value_parser = num)]
    count: Option<u64>,
    /// Bytes of data to compare (whole blocks); default: the block count's,
    /// or the whole data file.
    #[arg(short = 'z', long = "data-size", value_parser = num)]
    size: Option<u64>,
    /// The data to compare the blocks with (default: stdin); with extended
    /// LBAs, each block's data and then its metadata.
    #[arg(short = 'd', long = "data")]
    data: Option<PathBuf>,
    #[command(flatten)]
    meta: super::metadata::MetaArgs,
}

#[derive(Args)]
pub struct BlocksArgs {
    #[command(flatten)]
    ns: NsArg,
    /// First logical block.
    #[arg(short = 's', long = "start-block", value_parser = num)]
    start: u64,
    /// Number of blocks, 0-based as in nvme-cli (0 is one block).
    #[arg(short = 'c', long = "block-count", value_parser = num, default_value = "0")]
    count: u64,
    /// Confirm making the blocks unreadable (write-uncor).
    #[arg(short = 'y', long)]
    yes: bool,
}

#[derive(Args)]
pub struct CopyArgs {
    #[command(flatten)]
    ns: NsArg,
    /// First destination logical block.
    #[arg(short = 'd', long = "sdlba", value_parser = num)]
    sdlba: u64,
    /// First block of each source range (comma-separated).
    #[arg(short = 's', long = "slbs", value_parser = list)]
    slbs: List,
    /// Blocks of each source range, 0-based as in nvme-cli (0 is one
    /// block; comma-separated).
    #[arg(short = 'b', long = "blocks", value_parser = list)]
    blocks: List,
    /// Confirm overwriting the destination blocks.
    #[arg(short = 'y', long)]
    yes: bool,
}

#[derive(Args)]
pub struct DsmArgs {
    #[command(flatten)]
    ns: NsArg,
    /// First block of each range (comma-separated).
    #[arg(short = 's', long = "slbs", value_parser = list)]
    slbs: List,
    /// Blocks of each range (a count, not 0-based; comma-separated).
    #[arg(short = 'b', long = "blocks", value_parser = list)]
    blocks: List,
    /// Context attributes of each range (comma-separated; default 0).
    #[arg(short = 'a', long = "ctx-attrs", value_parser = list)]
    ctx_attrs: Option<List>,
    /// Attribute Deallocate.
    #[arg(short = 'd', long = "ad")]
    ad: bool,
    /// Attribute Integral Dataset for Write.
    #[arg(short = 'w', long = "idw")]
    idw: bool,
    /// Attribute Integral Dataset for Read.
    #[arg(short = 'r', long = "idr")]
    idr: bool,
    /// Command dword 11 (the attributes: bit 0 IDR, 1 IDW, 2 AD); replaces
    /// the flags.
    #[arg(short = 'c', long = "cdw11", value_parser = num32)]
    cdw11: Option<u32>,
    /// Confirm deallocating the ranges' blocks.
    #[arg(short = 'y', long)]
    yes: bool,
}

/// The device and namespace `a` names.
fn namespace(a: &NsArg) -> Result<(Device, Namespace), Fail> {
    let ctrl = open(&a.device)?;
    let ns = ctrl.namespace(a.nsid)?;
    Ok((ctrl, ns))
}

pub fn compare(a: &CompareArgs, json: bool) -> Result<(), Fail> {
    let mut data = Vec::new();
    match &a.data {
        Some(p) => std::fs::File::open(p)
            .and_then(|mut f| f.read_to_end(&mut data))
            .map_err(|e| Fail::Input(format!("{}: {e}", p.display())))?,
        None => std::io::stdin().lock().read_to_end(&mut data)?,
    };
    let meta = match &a.meta.metadata {
        Some(p) => super::metadata::read_file(p)?,
        None => Vec::new(),
    };
    let (ctrl, ns) = namespace(&a.ns)?;
    let plan = a.meta.plan(&ns)?;
    // Bytes per block in the data: with extended LBAs, data and metadata.
    let bs = plan.stride;
    let by_count = a
        .count
        .map(from_zero_based)
        .transpose()?
        .map(|b| {
            b.checked_mul(bs)
                .ok_or_else(|| Fail::Input("block count too large".into()))
        })
        .transpose()?;
    let len = match (by_count, a.size) {
        (Some(c), Some(z)) if c != z => {
            return Err(Fail::Input(format!(
                "--data-size {z} does not match --block-count {} (0-based): {c} bytes",
                a.count.unwrap_or(0)
            )))
        }
        (Some(n), _) | (None, Some(n)) => n,
        (None, None) => data.len() as u64,
    };
    if len == 0 || len % bs != 0 {
        let what = match bs == ns.block_size() {
            true => format!("the {bs}-byte block size"),
            false => format!("{bs} bytes per block (data and metadata)"),
        };
        return Err(Fail::Input(format!(
            "{len} bytes to compare: not a non-zero multiple of {what}"
        )));
    }
    if (data.len() as u64) < len {
        return Err(Fail::Input(format!(
            "the data holds {} bytes, the compare needs {len}",
            data.len()
        )));
    }
    if let Some(p) = &a.meta.metadata {
        super::metadata::check_len(p, meta.len(), len / bs, &plan)?;
    }
    super::check_range(&ns, a.start, len / bs)?;
    let mut qp = ctrl.queue_pair(QueueConfig::default())?;
    let data = &data[..len as usize];
    if ns.has_metadata() {
        qp.compare_with_metadata(&ns, a.start, data, &meta, plan.protection)?;
    } else {
        qp.compare(&ns, a.start, data)?;
    }
    if json {
        done(true, "compare", &ns, a.start, len / bs);
    } else {
        eprintln!("compare: Success");
    }
    Ok(())
}

pub fn verify(a: &BlocksArgs, json: bool) -> Result<(), Fail> {
    let blocks = from_zero_based(a.count)?;
    let (ctrl, ns) = namespace(&a.ns)?;
    super::check_range(&ns, a.start, blocks)?;
    ctrl.queue_pair(QueueConfig::default())?
        .verify(&ns, a.start, blocks)?;
    if json {
        done(true, "verify", &ns, a.start, blocks);
    } else {
        println!("NVME Verify Success");
    }
    Ok(())
}

pub fn write_uncor(a: &BlocksArgs, json: bool) -> Result<(), Fail> {
    if !a.yes {
        return Err(Fail::Input(
            "write-uncor makes the blocks unreadable until written: add --yes to confirm".into(),
        ));
    }
    let blocks = from_zero_based(a.count)?;
    let (ctrl, ns) = namespace(&a.ns)?;
    super::check_range(&ns, a.start, blocks)?;
    ctrl.queue_pair(QueueConfig::default())?
        .write_uncorrectable(&ns, a.start, blocks)?;
    if json {
        done(true, "write-uncor", &ns, a.start, blocks);
    } else {
        println!("NVME Write Uncorrectable Success");
    }
    Ok(())
}

pub fn copy(a: &CopyArgs, json: bool) -> Result<(), Fail> {
    let (slbs, blocks) = (&a.slbs.0, &a.blocks.0);
    if slbs.len() != blocks.len() {
        return Err(Fail::Input(format!(
            "{} source starting blocks (--slbs) but {} block counts (--blocks)",
            slbs.len(),
            blocks.len()
        )));
    }
    if !a.yes {
        return Err(Fail::Input(
            "copy overwrites the destination blocks: add --yes to confirm".into(),
        ));
    }
    let ranges = (slbs.iter().zip(blocks))
        .map(|(&lba, &nlb)| match u32::try_from(nlb) {
            Ok(n) if n < 1 << 16 => Ok(CopyRange::new(lba, n + 1)),
            _ => Err(Fail::Input(format!(
                "a source range of {nlb} blocks (0-based): at most 65535"
            ))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (ctrl, ns) = namespace(&a.ns)?;
    ctrl.queue_pair(QueueConfig::default())?
        .copy(&ns, &ranges, a.sdlba)?;
    if json {
        let total: u64 = ranges.iter().map(|r| u64::from(r.blocks)).sum();
        let items: Vec<String> = ranges
            .iter()
            .map(|r| format!("{{\"slba\":{},\"blocks\":{}}}", r.lba, r.blocks))
            .collect();
        println!(
            "{{\"command\":\"copy\",\"namespace\":{},\"sdlba\":{},\"ranges\":[{}],\"blocks\":{total},\"status\":\"success\"}}",
            ns.id(),
            a.sdlba,
            items.join(",")
        );
    } else {
        println!("NVMe Copy: success");
    }
    Ok(())
}

pub fn dsm(a: &DsmArgs, json: bool) -> Result<(), Fail> {
    let (slbs, blocks) = (&a.slbs.0, &a.blocks.0);
    let n = slbs.len();
    let attrs = a.ctx_attrs.clone().map_or_else(|| vec![0; n], |l| l.0);
    if blocks.len() != n || attrs.len() != n {
        return Err(Fail::Input(format!(
            "the range lists differ in length: {n} starting blocks (--slbs), {} block counts \
             (--blocks), {} context attributes (--ctx-attrs)",
            blocks.len(),
            attrs.len()
        )));
    }
    let attributes = match a.cdw11 {
        Some(c) => DsmAttributes::from_cdw11(c),
        None => DsmAttributes {
            deallocate: a.ad,
            integral_read: a.idr,
            integral_write: a.idw,
        },
    };
    if attributes.deallocate && !a.yes {
        return Err(Fail::Input(
            "dsm --ad deallocates the blocks (their data is lost): add --yes to confirm".into(),
        ));
    }
    let ranges = (slbs.iter().zip(blocks).zip(&attrs))
        .map(|((&lba, &blocks), &ca)| {
            let blocks = u32::try_from(blocks).map_err(|_| {
                Fail::Input(format!("a range of {blocks} blocks: at most 2^32 - 1"))
            })?;
            let ca = u32::try_from(ca)
                .map_err(|_| Fail::Input(format!("context attributes {ca:#x}: 32 bits")))?;
            Ok(DsmRange::new(lba, blocks).with_attributes(ca))
        })
        .collect::<Result<Vec<_>, Fail>>()?;
    let (ctrl, ns) = namespace(&a.ns)?;
    ctrl.queue_pair(QueueConfig::default())?
        .dataset_management(&ns, &ranges, attributes)?;
    if json {
        println!(
            "{{\"command\":\"dsm\",\"namespace\":{},\"ranges\":{},\"attributes\":{{{}:{},{}:{},{}:{}}},\"status\":\"success\"}}",
            ns.id(),
            ranges.len(),
            js("ad"),
            attributes.deallocate,
            js("idw"),
            attributes.integral_write,
            js("idr"),
            attributes.integral_read
        );
    } else {
        println!("NVMe DSM: success");
    }
    Ok(())
}
