//! What the controller says about itself: Identify data and log pages.

use std::sync::atomic::Ordering;

use nvme_vfio::nvme::cmd::{admin, cns, io, log_page, Command};
use nvme_vfio::nvme::identify::{IdentifyController, IdentifyNamespace, LbaFormat, IDENTIFY_LEN};
use nvme_vfio::nvme::iocs::{
    build_descriptors, nidt, CommandSet, IdentifyNamespaceIndependent, IdentifyNvmNamespace,
    IdentifyZonedNamespace,
};
use nvme_vfio::nvme::log::{SmartLog, ERROR_ENTRY_LEN};
use nvme_vfio::nvme::nvm::{
    CommandEffects, IdentifyNvmController, OptionalCommand, EFFECTS_CSUPP, EFFECTS_LBCC,
    OCFS_FORMAT_0,
};

use super::{csc, fail, invalid, sc, specific, Device, Outcome, AER_LIMIT, ERROR_LOG_ENTRIES};
use crate::regs::VERSION_1_4;

/// The longest Get Log Page transfer when MDTS sets no limit.
const MAX_LOG_TRANSFER: u64 = 1 << 20;
/// OACS bit 8: Doorbell Buffer Config.
const OACS_DBBC: u16 = 1 << 8;
/// LPA: SMART per namespace (bit 0), Commands Supported and Effects log
/// (bit 1).
const LPA_EFFECTS: u8 = 1 << 1;
/// OAES bit 8: Namespace Attribute Notices.
const OAES_NAMESPACE_NOTICES: u32 = 1 << 8;
/// SGLS bit 16: Bit Bucket descriptors supported.
const SGLS_BIT_BUCKET: u32 = 1 << 16;
/// Log page: Changed Namespace List.
pub(crate) const CHANGED_NAMESPACE_LOG: u32 = 0x04;
/// Get Log Page dword 10 bit 15: Retain Asynchronous Event.
const RAE: u32 = 1 << 15;
/// Abort Command Limit (0-based): 4 concurrent Aborts.
const ACL: u8 = 3;
/// SGLS: SGLs supported for NVM commands, no alignment requirement.
const SGLS_BYTE_ALIGNED: u32 = 0x1;
/// VWC: present (bit 0), Flush with NSID FFFFFFFFh supported (bits 2:1).
const VWC_PRESENT: u8 = 0x7;
/// DLFEAT: Write Zeroes may deallocate (bit 3), deallocated blocks read
/// as zeroes (bits 2:0 = 001b).
const DLFEAT_ZEROES: u8 = 0x09;

/// Identify Namespace MC: extended LBAs (bit 0) and separate metadata
/// (bit 1).
const MC_BOTH: u8 = 0x3;
/// Identify Namespace DPC: protection information types 1 to 3 (bits 2:0),
/// in the first (bit 3) or last (bit 4) bytes of the metadata.
const DPC_ALL: u8 = 0x1f;

/// `bits` if `on`, else none.
fn flag<T: Default>(on: bool, bits: T) -> T {
    if on {
        bits
    } else {
        T::default()
    }
}

impl Device {
    /// The Identify Controller data this controller returns.
    pub(crate) fn identify_controller(&self) -> IdentifyController {
        let c = &self.sh.config;
        let mut id = IdentifyController::default();
        // No PCI vendor: this is no PCI device.
        id.set_identity(0, &c.serial, "nvme-sim", env!("CARGO_PKG_VERSION"));
        id.set_limits(c.mdts, 0, VERSION_1_4);
        id.set_features(
            flag(c.doorbell_buffer_config, OACS_DBBC),
            ACL,
            0x66,
            0x44,
            c.nn(),
            self.oncs(),
            flag(c.volatile_write_cache, VWC_PRESENT),
            flag(
                c.sgl,
                SGLS_BYTE_ALIGNED | flag(c.sgl_bit_bucket, SGLS_BIT_BUCKET),
            ),
        );
        id.set_log_and_copy_support(
            flag(c.effects_log, LPA_EFFECTS),
            flag(c.copy, OCFS_FORMAT_0),
        );
        id.0[92..96].copy_from_slice(&OAES_NAMESPACE_NOTICES.to_le_bytes());
        // AERL (0-based), ELPE (0-based), CNTRLTYPE = I/O controller.
        id.0[259] = AER_LIMIT as u8 - 1;
        id.0[262] = ERROR_LOG_ENTRIES as u8 - 1;
        id.0[111] = 1;
        id
    }

    /// Whether the controller executes optional command `c`.
    pub(super) fn executes(&self, c: OptionalCommand) -> bool {
        let k = &self.sh.config;
        match c {
            OptionalCommand::Compare => k.compare,
            OptionalCommand::WriteUncorrectable => k.write_uncorrectable,
            OptionalCommand::DatasetManagement => k.dataset_management,
            OptionalCommand::WriteZeroes => k.write_zeroes,
            OptionalCommand::Verify => k.verify,
            OptionalCommand::Copy => k.copy,
        }
    }

    /// Identify Controller ONCS: the optional commands executed (Verify
    /// left out unless [`verify_in_oncs`](crate::Config::verify_in_oncs)).
    fn oncs(&self) -> u16 {
        OptionalCommand::ALL
            .iter()
            .filter(|&&c| self.executes(c))
            .filter(|&&c| c != OptionalCommand::Verify || self.sh.config.verify_in_oncs)
            .fold(0, |oncs, c| oncs | c.oncs_bit())
    }

    /// The Commands Supported and Effects log: every command executed.
    fn command_effects(&self) -> CommandEffects {
        let mut log = CommandEffects::default();
        let c = &self.sh.config;
        let mut admins = vec![
            admin::DELETE_SQ,
            admin::CREATE_SQ,
            admin::GET_LOG_PAGE,
            admin::DELETE_CQ,
            admin::CREATE_CQ,
            admin::IDENTIFY,
            admin::ABORT,
            admin::SET_FEATURES,
            admin::GET_FEATURES,
            admin::ASYNC_EVENT,
            admin::FORMAT_NVM,
        ];
        if c.doorbell_buffer_config {
            admins.push(admin::DOORBELL_BUFFER_CONFIG);
        }
        for op in admins {
            log.set_admin(op, EFFECTS_CSUPP);
        }
        log.set_io(io::FLUSH, EFFECTS_CSUPP | EFFECTS_LBCC);
        log.set_io(io::WRITE, EFFECTS_CSUPP | EFFECTS_LBCC);
        log.set_io(io::READ, EFFECTS_CSUPP);
        for cmd in OptionalCommand::ALL {
            if self.executes(cmd) {
                let changes = !matches!(cmd, OptionalCommand::Compare | OptionalCommand::Verify);
                log.set_io(cmd.opcode(), EFFECTS_CSUPP | flag(changes, EFFECTS_LBCC));
            }
        }
        log
    }

    /// The NVM command set's Identify Controller data (CNS 06h, CSI 00h).
    fn identify_nvm_controller(&self) -> IdentifyNvmController {
        let l = self.sh.config.nvm_limits;
        let mut id = IdentifyNvmController::default();
        id.set_limits(l.vsl, l.wzsl, l.wusl, l.dmrl, l.dmrsl, l.dmsl);
        id
    }

    /// Identify Namespace data for namespace `nsid`, if it exists: all
    /// zeroes while its command set is not enabled (inactive).
    pub(crate) fn identify_namespace(&self, nsid: u32) -> Option<IdentifyNamespace> {
        let mut id = IdentifyNamespace::default();
        let Some(ns) = self.active_namespace(nsid) else {
            return self.namespace(nsid).map(|_| id);
        };
        id.set_size(ns.blocks);
        id.set_utilization(ns.used_blocks());
        let formats = [
            LbaFormat {
                metadata: if ns.block_size == 512 { ns.metadata } else { 0 },
                lbads: 9,
                rp: 0,
            },
            LbaFormat {
                metadata: if ns.block_size == 4096 {
                    ns.metadata
                } else {
                    0
                },
                lbads: 12,
                rp: 0,
            },
        ];
        id.set_formats(&formats, if ns.block_size == 4096 { 1 } else { 0 });
        if ns.metadata > 0 {
            // Extended or separate metadata (both supported: MC 03h); every
            // protection information type, first or last (DPC 1Fh) where
            // the metadata holds the tuple; DPS as formatted now.
            let f = ns.format();
            let dpc = if usize::from(ns.metadata) >= ns.guard.tuple_len() {
                DPC_ALL
            } else {
                0
            };
            let dps = f.pi.map_or(0, |p| p.kind.dps() | u8::from(p.first) << 3);
            id.set_metadata(f.extended, MC_BOTH, dpc, dps);
        }
        id.0[33] = DLFEAT_ZEROES;
        if self.sh.config.copy {
            id.set_copy_limits(self.sh.config.copy_limits);
        }
        Some(id)
    }

    /// The command set of active namespace `nsid`.
    fn command_set_of(&self, nsid: u32) -> Option<CommandSet> {
        let ns = self.active_namespace(nsid)?;
        Some(if ns.zoned.is_some() {
            CommandSet::Zoned
        } else {
            CommandSet::Nvm
        })
    }

    /// Active namespace IDs above `after` (of command set `only`), at most
    /// one list's worth.
    fn namespace_list(&self, after: u32, only: Option<CommandSet>) -> Box<[u8; IDENTIFY_LEN]> {
        let mut b = Box::new([0u8; IDENTIFY_LEN]);
        let mut ids: Vec<u32> = (self.sh.namespaces.iter())
            .map(|n| n.id)
            .filter(|&id| {
                id > after
                    && self
                        .command_set_of(id)
                        .is_some_and(|cs| only.is_none_or(|o| o == cs))
            })
            .collect();
        ids.sort_unstable();
        for (slot, id) in b.chunks_exact_mut(4).zip(ids) {
            slot.copy_from_slice(&id.to_le_bytes());
        }
        b
    }

    /// The Namespace Identification Descriptor list of active namespace
    /// `nsid`: a UUID made of the serial number and the NSID, and (with
    /// I/O command sets) the CSI.
    fn namespace_descriptors(&self, nsid: u32) -> Option<Box<[u8; IDENTIFY_LEN]>> {
        let cs = self.command_set_of(nsid)?;
        let mut uuid = [0u8; 16];
        let serial = self.sh.config.serial.as_bytes();
        let n = serial.len().min(12);
        uuid[..n].copy_from_slice(&serial[..n]);
        uuid[12..].copy_from_slice(&nsid.to_be_bytes());
        let csi = [cs.csi()];
        let d: [(u8, &[u8]); 2] = [(nidt::UUID, &uuid), (nidt::CSI, &csi)];
        let n = if self.sh.config.io_command_sets { 2 } else { 1 };
        Some(build_descriptors(&d[..n]))
    }

    /// I/O Command Set specific Identify Namespace (CNS 05h): NVM's has the
    /// extended LBA formats (no storage tag; the protection information
    /// format, 16- or 64-bit guard, of the namespace's own format), also
    /// for a zoned namespace; a zoned namespace's has its resources and
    /// zone size per LBA format.
    fn identify_namespace_csi(&self, nsid: u32, csi: u8) -> Result<Box<[u8; IDENTIFY_LEN]>, u8> {
        let zeroes = Box::new([0u8; IDENTIFY_LEN]);
        // An inactive namespace ID: zero-filled.
        let Some(ns) = self.active_namespace(nsid) else {
            return Ok(zeroes);
        };
        match (CommandSet::from_csi(csi), &ns.zoned) {
            // The zoned command set includes the NVM one's reads.
            (CommandSet::Nvm, _) => {
                let mut id = IdentifyNvmNamespace::default();
                let current = usize::from(ns.block_size == 4096);
                for i in 0..2 {
                    let pif = if i == current { ns.guard.pif() } else { 0 };
                    id.set_elbaf(i, 0, pif);
                }
                Ok(id.0)
            }
            (CommandSet::Zoned, Some(z)) => {
                let mut id = IdentifyZonedNamespace::default();
                let limit = |n: u32| n.checked_sub(1).unwrap_or(u32::MAX);
                id.set_resources(limit(z.config.max_active), limit(z.config.max_open));
                let zone_bytes = z.config.zone_blocks * u64::from(ns.block_size);
                // The zone size of each LBA format (512, 4096 bytes).
                id.set_zone_size(0, zone_bytes / 512);
                id.set_zone_size(1, zone_bytes / 4096);
                Ok(id.0)
            }
            _ => Err(sc::INVALID_FIELD),
        }
    }

    /// I/O Command Set Independent Identify Namespace (CNS 08h).
    fn identify_namespace_independent(&self, nsid: u32) -> IdentifyNamespaceIndependent {
        let mut id = IdentifyNamespaceIndependent::default();
        if self.active_namespace(nsid).is_some() {
            // Private namespace, not write protected, ready.
            id.set(0, 0, 1);
        }
        id
    }

    pub(super) fn identify(&mut self, cmd: &Command) -> Outcome {
        let data: Box<[u8; IDENTIFY_LEN]> = match cmd.cdw10 as u8 {
            cns::CONTROLLER => self.identify_controller().0,
            cns::NAMESPACE => match self.identify_namespace(cmd.nsid) {
                Some(id) => id.0,
                // An inactive ID: all zeroes.
                None if (1..=self.sh.config.nn()).contains(&cmd.nsid) => {
                    Box::new([0u8; IDENTIFY_LEN])
                }
                None => return fail(invalid(sc::INVALID_NAMESPACE)),
            },
            cns::ACTIVE_NAMESPACES => {
                // IDs greater than NSID, ascending, at most 1024.
                if cmd.nsid >= 0xffff_fffe {
                    return fail(invalid(sc::INVALID_NAMESPACE));
                }
                self.namespace_list(cmd.nsid, None)
            }
            cns::NAMESPACE_DESCRIPTORS => match self.namespace_descriptors(cmd.nsid) {
                Some(b) => b,
                None => return fail(invalid(sc::INVALID_NAMESPACE)),
            },
            c @ (cns::CSI_NAMESPACE
            | cns::CSI_CONTROLLER
            | cns::CSI_ACTIVE_NAMESPACES
            | cns::INDEPENDENT_NAMESPACE)
                if self.sh.config.io_command_sets =>
            {
                match self.identify_command_set(c, cmd) {
                    Ok(b) => b,
                    Err(code) => return fail(invalid(code)),
                }
            }
            _ => return fail(invalid(sc::INVALID_FIELD)),
        };
        self.send(cmd, &data[..], false)
    }

    /// The Identify CNS values of I/O command sets (05h to 08h); `Err`
    /// holds a generic status code.
    fn identify_command_set(&self, cns: u8, cmd: &Command) -> Result<Box<[u8; IDENTIFY_LEN]>, u8> {
        let csi = cmd.identify_csi_field();
        let known = matches!(
            CommandSet::from_csi(csi),
            CommandSet::Nvm | CommandSet::Zoned
        );
        let valid_nsid = cmd.nsid != 0 && cmd.nsid < 0xffff_fffe;
        match cns {
            cns::CSI_NAMESPACE if !valid_nsid => Err(sc::INVALID_NAMESPACE),
            cns::CSI_NAMESPACE => self.identify_namespace_csi(cmd.nsid, csi),
            cns::CSI_CONTROLLER if CommandSet::from_csi(csi) == CommandSet::Nvm => {
                Ok(self.identify_nvm_controller().0)
            }
            // Zoned's: ZASL in byte 0, the rest reserved.
            cns::CSI_CONTROLLER if known => {
                let mut b = Box::new([0u8; IDENTIFY_LEN]);
                b[0] = self.sh.config.zasl;
                Ok(b)
            }
            cns::CSI_ACTIVE_NAMESPACES if cmd.nsid >= 0xffff_fffe => Err(sc::INVALID_NAMESPACE),
            cns::CSI_ACTIVE_NAMESPACES if known => {
                Ok(self.namespace_list(cmd.nsid, Some(CommandSet::from_csi(csi))))
            }
            cns::INDEPENDENT_NAMESPACE if !valid_nsid => Err(sc::INVALID_NAMESPACE),
            cns::INDEPENDENT_NAMESPACE => Ok(self.identify_namespace_independent(cmd.nsid).0),
            _ => Err(sc::INVALID_FIELD),
        }
    }

    /// The SMART / Health Information log page.
    pub(crate) fn smart_log(&self) -> SmartLog {
        let s = &self.sh.stats;
        // Data units are thousands of 512-byte units, rounded up.
        let units = |b: u64| b.div_ceil(512 * 1000);
        SmartLog {
            temperature_k: super::admin::TEMPERATURE_K,
            critical_warning: self.critical_warning,
            available_spare: 100,
            spare_threshold: 10,
            data_units_read: units(s.bytes_read.load(Ordering::Relaxed)),
            data_units_written: units(s.bytes_written.load(Ordering::Relaxed)),
            host_read_commands: s.read_commands.load(Ordering::Relaxed),
            host_write_commands: s.write_commands.load(Ordering::Relaxed),
            power_cycles: 1,
            error_log_entries: self.error_count,
            ..Default::default()
        }
    }

    pub(super) fn get_log_page(&mut self, cmd: &Command) -> Outcome {
        let numd = ((cmd.cdw11 & 0xffff) << 16 | cmd.cdw10 >> 16) as u64 + 1;
        let len = numd * 4;
        let off = cmd.cdw12 as u64 | (cmd.cdw13 as u64) << 32;
        let lid = cmd.cdw10 as u8;
        let page: Vec<u8> = match lid {
            log_page::SMART => self.smart_log().to_bytes().to_vec(),
            log_page::FIRMWARE_SLOT => {
                // Slot 1, active, holding this model's version.
                let mut b = vec![0u8; 512];
                b[0] = 1;
                let rev = env!("CARGO_PKG_VERSION").as_bytes();
                let n = rev.len().min(8);
                b[8..8 + n].copy_from_slice(&rev[..n]);
                b[8 + n..16].fill(b' ');
                b
            }
            l if u32::from(l) == CHANGED_NAMESPACE_LOG => {
                let mut b = vec![0u8; IDENTIFY_LEN];
                for (slot, id) in b.chunks_exact_mut(4).zip(&self.changed_namespaces) {
                    slot.copy_from_slice(&id.to_le_bytes());
                }
                b
            }
            log_page::COMMAND_EFFECTS if self.sh.config.effects_log => {
                self.command_effects().0.to_vec()
            }
            log_page::ERROR => {
                let mut b = vec![0u8; ERROR_LOG_ENTRIES * ERROR_ENTRY_LEN];
                for (slot, e) in b.chunks_exact_mut(ERROR_ENTRY_LEN).zip(&self.errors) {
                    slot.copy_from_slice(&e.to_bytes());
                }
                b
            }
            _ => return fail(specific(csc::INVALID_LOG_PAGE)),
        };
        if off % 4 != 0 || off > page.len() as u64 {
            return fail(invalid(sc::INVALID_FIELD));
        }
        // Beyond MDTS, or (without MDTS) beyond 1 MiB: no log is nearly
        // that long, and the zeroes past its end are not worth allocating.
        if len > self.sh.config.max_transfer().unwrap_or(MAX_LOG_TRANSFER) {
            return fail(invalid(sc::INVALID_FIELD));
        }
        // Bytes past the end of the log read as zeroes.
        let mut out = vec![0u8; len as usize];
        let from = &page[off as usize..];
        let n = from.len().min(out.len());
        out[..n].copy_from_slice(&from[..n]);
        let sent = self.send(cmd, &out, false);
        let read = sent.is_some_and(|(s, _)| s.is_success());
        if read && u32::from(lid) == CHANGED_NAMESPACE_LOG && cmd.cdw10 & RAE == 0 {
            self.changed_namespaces_read();
        }
        sent
    }
}
