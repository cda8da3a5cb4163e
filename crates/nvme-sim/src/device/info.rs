//! What the controller says about itself: Identify data and log pages.

use std::sync::atomic::Ordering;

use nvme_vfio::nvme::cmd::{cns, log_page, Command};
use nvme_vfio::nvme::identify::{IdentifyController, IdentifyNamespace, LbaFormat, IDENTIFY_LEN};
use nvme_vfio::nvme::log::{SmartLog, ERROR_ENTRY_LEN};

use super::{csc, fail, invalid, sc, specific, Device, Outcome, AER_LIMIT, ERROR_LOG_ENTRIES};
use crate::regs::VERSION_1_4;

/// The longest Get Log Page transfer when MDTS sets no limit.
const MAX_LOG_TRANSFER: u64 = 1 << 20;
/// OACS bit 8: Doorbell Buffer Config.
const OACS_DBBC: u16 = 1 << 8;
/// ONCS bit 2: Dataset Management; bit 3: Write Zeroes.
const ONCS_DSM_WZ: u16 = (1 << 2) | (1 << 3);
/// Abort Command Limit (0-based): 4 concurrent Aborts.
const ACL: u8 = 3;
/// SGLS: SGLs supported for NVM commands, no alignment requirement.
const SGLS_BYTE_ALIGNED: u32 = 0x1;
/// VWC: present (bit 0), Flush with NSID FFFFFFFFh supported (bits 2:1).
const VWC_PRESENT: u8 = 0x7;
/// DLFEAT: Write Zeroes may deallocate (bit 3), deallocated blocks read
/// as zeroes (bits 2:0 = 001b).
const DLFEAT_ZEROES: u8 = 0x09;

impl Device {
    /// The Identify Controller data this controller returns.
    pub(crate) fn identify_controller(&self) -> IdentifyController {
        let c = &self.sh.config;
        let mut id = IdentifyController::default();
        // No PCI vendor: this is no PCI device.
        id.set_identity(0, &c.serial, "nvme-sim", env!("CARGO_PKG_VERSION"));
        id.set_limits(c.mdts, 0, VERSION_1_4);
        id.set_features(
            OACS_DBBC,
            ACL,
            0x66,
            0x44,
            self.sh.namespaces.len() as u32,
            ONCS_DSM_WZ,
            if c.volatile_write_cache {
                VWC_PRESENT
            } else {
                0
            },
            if c.sgl { SGLS_BYTE_ALIGNED } else { 0 },
        );
        // AERL (0-based), ELPE (0-based), CNTRLTYPE = I/O controller.
        id.0[259] = AER_LIMIT as u8 - 1;
        id.0[262] = ERROR_LOG_ENTRIES as u8 - 1;
        id.0[111] = 1;
        id
    }

    /// Identify Namespace data for namespace `nsid`, if it exists.
    pub(crate) fn identify_namespace(&self, nsid: u32) -> Option<IdentifyNamespace> {
        let ns = self.namespace(nsid)?;
        let mut id = IdentifyNamespace::default();
        id.set_size(ns.blocks);
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
        id.0[33] = DLFEAT_ZEROES;
        Some(id)
    }

    pub(super) fn identify(&mut self, cmd: &Command) -> Outcome {
        let data: Box<[u8; IDENTIFY_LEN]> = match cmd.cdw10 as u8 {
            cns::CONTROLLER => self.identify_controller().0,
            cns::NAMESPACE => match self.identify_namespace(cmd.nsid) {
                Some(id) => id.0,
                None => return fail(invalid(sc::INVALID_NAMESPACE)),
            },
            cns::ACTIVE_NAMESPACES => {
                // IDs greater than NSID, ascending, at most 1024.
                if cmd.nsid >= 0xffff_fffe {
                    return fail(invalid(sc::INVALID_NAMESPACE));
                }
                let mut b = Box::new([0u8; IDENTIFY_LEN]);
                let ids = (1..=self.sh.namespaces.len() as u32).filter(|&id| id > cmd.nsid);
                for (slot, id) in b.chunks_exact_mut(4).zip(ids) {
                    slot.copy_from_slice(&id.to_le_bytes());
                }
                b
            }
            _ => return fail(invalid(sc::INVALID_FIELD)),
        };
        self.send(cmd, &data[..], false)
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
        let page: Vec<u8> = match cmd.cdw10 as u8 {
            log_page::SMART => self.smart_log().to_bytes().to_vec(),
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
        self.send(cmd, &out, false)
    }
}
