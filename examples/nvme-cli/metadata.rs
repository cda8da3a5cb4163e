//! Block metadata and end-to-end protection options of read, write and
//! compare, with nvme-cli's names: `-M/--metadata` (the metadata file),
//! `-y/--metadata-size`, `-p/--prinfo` (bit 3 PRACT, bits 2:0 PRCHK
//! guard, application tag, reference tag), `-r/--ref-tag`, `-a/--app-tag`
//! and `-m/--app-tag-mask`.
//!
//! On an extended-LBA namespace the data file holds each block's data
//! and then its metadata, as nvme-cli's does; with a separate metadata
//! buffer the metadata file holds the blocks' metadata one after the
//! other. Without --prinfo, the commands have PRACT and PRCHK clear
//! (nvme-cli's default), except that a namespace with a separate metadata
//! buffer whose metadata is its protection information alone
//! reads and writes without a metadata file with PRACT: the controller
//! inserts and strips the tuples.

use std::io::Read;
use std::path::PathBuf;

use clap::Args;
use nvme_vfio::ctrl::{Checks, Namespace, PiAction, Protection};

use super::{num, num8, Fail};

fn num16(s: &str) -> Result<u16, String> {
    num(s).and_then(|v| u16::try_from(v).map_err(|_| format!("{s}: more than 16 bits")))
}

fn prinfo(s: &str) -> Result<u8, String> {
    num8(s).and_then(|v| match v {
        0..=15 => Ok(v),
        _ => Err(format!("{s}: PRINFO is 4 bits (0 to 15)")),
    })
}

/// The metadata and protection options of a command that moves blocks.
#[derive(Args)]
pub struct MetaArgs {
    /// Metadata file: the blocks' metadata for a namespace with a separate
    /// metadata buffer (read: written to it; write and compare: taken from
    /// it, exactly blocks × metadata size bytes).
    #[arg(short = 'M', long = "metadata")]
    pub metadata: Option<PathBuf>,
    /// Bytes of metadata per block: checked against the namespace's.
    #[arg(short = 'y', long = "metadata-size", value_parser = num)]
    pub metadata_size: Option<u64>,
    /// Protection information action and checks (PRINFO, 4 bits): bit 3
    /// PRACT (the controller inserts and strips the tuples), bits 2:0
    /// PRCHK (check the guard, the application tag, the reference tag).
    #[arg(short = 'p', long = "prinfo", value_parser = prinfo)]
    pub prinfo: Option<u8>,
    /// Initial reference tag (default: the first LBA).
    #[arg(short = 'r', long = "ref-tag", value_parser = num)]
    pub ref_tag: Option<u64>,
    /// Application tag.
    #[arg(short = 'a', long = "app-tag", value_parser = num16)]
    pub app_tag: Option<u16>,
    /// Application tag mask: the bits of the application tag checked.
    #[arg(short = 'm', long = "app-tag-mask", value_parser = num16)]
    pub app_tag_mask: Option<u16>,
}

/// How a command's blocks are laid out in its files, checked against the
/// namespace.
pub struct Plan {
    /// The protection settings the command runs with (`None`: the
    /// driver's default).
    pub protection: Option<Protection>,
    /// Bytes per block in the data file.
    pub stride: u64,
    /// Bytes per block in the metadata file (0: none).
    pub meta_stride: u64,
}

impl MetaArgs {
    /// Whether any protection option is given.
    fn protection_given(&self) -> bool {
        self.prinfo.is_some()
            || self.ref_tag.is_some()
            || self.app_tag.is_some()
            || self.app_tag_mask.is_some()
    }

    /// Checks the options against namespace `ns` and plans the layout of
    /// the data and metadata files.
    pub fn plan(&self, ns: &Namespace) -> Result<Plan, Fail> {
        let nsid = ns.id();
        let format = ns.format();
        let ms = u64::from(ns.metadata_size());
        if let Some(y) = self.metadata_size {
            if y != ms {
                return Err(Fail::Input(format!(
                    "--metadata-size {y} does not match namespace {nsid}'s {ms} bytes of metadata per block"
                )));
            }
        }
        if !ns.has_metadata() {
            if let Some(p) = &self.metadata {
                return Err(Fail::Input(format!(
                    "--metadata {}: namespace {nsid} is formatted without metadata",
                    p.display()
                )));
            }
        }
        let protection = match (self.protection_given(), ns.protection_info()) {
            // Extended LBAs move as they are, as nvme-cli's PRINFO 0 has it:
            // the data file holds each block's data and metadata.
            (false, Some(_)) if format.extended => Some(Protection::as_is(Checks::NONE)),
            (false, _) => None,
            (true, None) => {
                return Err(Fail::Input(format!(
                    "--prinfo, --ref-tag, --app-tag and --app-tag-mask apply to namespaces with \
                     protection information: namespace {nsid} is formatted without it"
                )))
            }
            (true, Some(_)) => {
                let p = self.prinfo.unwrap_or(0);
                let action = match p & 0x8 != 0 {
                    true => PiAction::Controller,
                    false => PiAction::AsIs,
                };
                Some(Protection {
                    action,
                    checks: Checks::from_prchk(p & 0x7),
                    reference: self.ref_tag,
                    app: self.app_tag.unwrap_or(0),
                    app_mask: self.app_tag_mask.unwrap_or(0),
                })
            }
        };
        // Without protection options or a metadata file, a namespace whose
        // metadata is the tuple alone runs with PRACT (the driver's
        // default).
        let pract = match protection {
            Some(p) => p.pract(),
            None => self.metadata.is_none() && format.metadata_is_pi(),
        };
        let stride = format.data_stride(pract);
        let meta_stride = format.metadata_stride(pract);
        match (&self.metadata, meta_stride) {
            (Some(p), 0) if ms != 0 => {
                return Err(Fail::Input(format!(
                    "--metadata {}: namespace {nsid} moves no separate metadata {}",
                    p.display(),
                    if format.extended && !pract {
                        "(extended LBAs: each block's metadata follows its data in the data file)"
                    } else {
                        "with PRACT (the controller inserts and strips the protection information, its whole metadata)"
                    }
                )))
            }
            (None, n) if n != 0 => {
                return Err(Fail::Input(format!(
                    "namespace {nsid} keeps {ms} bytes of metadata per block in a separate buffer: \
                     give a metadata file (-M/--metadata){}",
                    if format.metadata_is_pi() {
                        ", or --prinfo 8 (PRACT) to have the controller insert and strip it"
                    } else {
                        ""
                    }
                )))
            }
            _ => {}
        }
        Ok(Plan {
            protection,
            stride,
            meta_stride,
        })
    }
}

/// The bytes of the metadata file `path`.
pub fn read_file(path: &PathBuf) -> Result<Vec<u8>, Fail> {
    let mut v = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut v))
        .map_err(|e| Fail::Input(format!("{}: {e}", path.display())))?;
    Ok(v)
}

/// Checks that metadata file `path`'s `have` bytes are those of `blocks`
/// blocks.
pub fn check_len(
    path: &std::path::Path,
    have: usize,
    blocks: u64,
    plan: &Plan,
) -> Result<(), Fail> {
    let want = blocks * plan.meta_stride;
    if have as u64 != want {
        return Err(Fail::Input(format!(
            "the metadata file {} holds {have} bytes: {blocks} blocks of {} bytes of metadata need {want}",
            path.display(),
            plan.meta_stride
        )));
    }
    Ok(())
}
