//! Namespaces and their I/O command sets: which command set a namespace
//! belongs to (the CSI descriptor of the Namespace Identification
//! Descriptor list), the command set specific Identify data (a zoned
//! namespace's zone size and resource limits), the command set independent
//! Identify Namespace data, and the lists of active namespaces (per
//! command set where the controller selects them).
//!
//! The controller is enabled with every I/O command set it supports
//! (CC.CSS = 110b) when CAP.CSS says it can be ([`Controller::io_command_sets`]);
//! otherwise only the NVM command set is enabled and every namespace is
//! an NVM one.

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::sync::atomic::Ordering;

use super::Controller;
use crate::nvme::cmd::{cns, Command};
use crate::nvme::identify::{IdentifyNamespace, IDENTIFY_LEN};
use crate::nvme::iocs::{
    IdentifyNamespaceIndependent, IdentifyZonedController, IdentifyZonedNamespace, NamespaceIds,
};
use crate::Error;

pub use crate::nvme::iocs::CommandSet;

/// Entries in one namespace ID list (4096 bytes of 32-bit IDs).
const LIST_ENTRIES: usize = IDENTIFY_LEN / 4;
/// Most namespace ID list pages read for one list: 4 Mi namespace IDs,
/// far more than any controller has, so a device that keeps returning full
/// pages cannot keep the driver in the loop.
const MAX_LIST_PAGES: usize = 4096;
/// NVMe version 2.0 in the VER format.
const VERSION_2_0: u32 = 0x0002_0000;

/// The zones of a zoned namespace, from its Zoned Namespace Identify data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ZoneInfo {
    zone_blocks: NonZeroU64,
    /// MOR and MAR as reported: 0-based, FFFFFFFFh for no limit.
    mor: u32,
    mar: u32,
    zasl: u8,
    reads_cross_zones: bool,
}

impl ZoneInfo {
    /// The zone size of `id`'s LBA format `format` with the controller's
    /// ZASL; `None` if the device reports a zone size of 0.
    pub(super) fn new(id: &IdentifyZonedNamespace, format: usize, zasl: u8) -> Option<Self> {
        Some(ZoneInfo {
            zone_blocks: NonZeroU64::new(id.zone_size(format)?)?,
            mor: id.mor(),
            mar: id.mar(),
            zasl,
            reads_cross_zones: id.reads_cross_zones(),
        })
    }

    /// Zone size in logical blocks.
    pub fn zone_blocks(&self) -> u64 {
        self.zone_blocks.get()
    }

    /// Most zones that can be open at once (`None`: no limit).
    pub fn max_open(&self) -> Option<u32> {
        // + 1 cannot overflow: u32::MAX is "no limit".
        (self.mor != u32::MAX).then(|| self.mor + 1)
    }

    /// Most zones that can be active at once (`None`: no limit).
    pub fn max_active(&self) -> Option<u32> {
        (self.mar != u32::MAX).then(|| self.mar + 1)
    }

    /// The Zone Append Size Limit (Zoned Namespace Identify Controller):
    /// `2^ZASL` minimum memory pages per Zone Append, 0 for MDTS.
    pub fn zasl(&self) -> u8 {
        self.zasl
    }

    /// Whether reads may cross zone boundaries (OZCS bit 0); without it,
    /// a read that spans two zones fails.
    pub fn reads_cross_zones(&self) -> bool {
        self.reads_cross_zones
    }
}

/// One active namespace and its command set, as listed by
/// [`Controller::list_namespaces`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NamespaceEntry {
    /// The namespace ID.
    pub nsid: u32,
    /// Its I/O command set.
    pub command_set: CommandSet,
}

/// What Identify reports about one namespace, for each command set the
/// data that applies ([`Controller::namespace_info`]).
#[derive(Clone, Debug)]
pub struct NamespaceInfo {
    /// The namespace ID.
    pub nsid: u32,
    /// Its I/O command set.
    pub command_set: CommandSet,
    /// The Namespace Identification Descriptor list, when the controller
    /// has I/O command sets (it is where the command set is read).
    pub ids: Option<NamespaceIds>,
    /// Identify Namespace (CNS 00h), for the command sets it describes
    /// (NVM and Zoned Namespace).
    pub identify: Option<IdentifyNamespace>,
    /// The I/O Command Set Independent Identify Namespace data (CNS 08h),
    /// where the controller has it.
    pub independent: Option<IdentifyNamespaceIndependent>,
    /// The Zoned Namespace Identify Namespace data (CNS 05h), for a zoned
    /// namespace.
    pub zoned: Option<IdentifyZonedNamespace>,
    /// The Zoned Namespace Identify Controller data (CNS 06h), for a zoned
    /// namespace.
    pub zoned_controller: Option<IdentifyZonedController>,
}

impl NamespaceInfo {
    /// The zones of a zoned namespace, in its current LBA format (`None`
    /// for other namespaces, or when the device reports no zone size).
    pub fn zones(&self) -> Option<ZoneInfo> {
        let format = self.identify.as_ref()?.current_format();
        let zasl = self.zoned_controller.as_ref().map_or(0, |c| c.zasl());
        ZoneInfo::new(self.zoned.as_ref()?, format, zasl)
    }
}

/// `Ok(None)` for a command the controller refused (logged), the error
/// otherwise: optional Identify data that a controller may not have.
pub(super) fn optional<T>(r: Result<T, Error>, what: &str) -> Result<Option<T>, Error> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(Error::Command { status, .. }) => {
            log::debug!("{what}: not available ({status})");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

impl Controller {
    /// Whether the controller was enabled with every I/O command set it
    /// supports (CC.CSS = 110b, as CAP.CSS bit 6 allows): then namespaces
    /// of other command sets than NVM (zoned ones) are usable and each
    /// namespace's command set is read from its descriptor list. Otherwise
    /// only the NVM command set is enabled.
    pub fn io_command_sets(&self) -> bool {
        self.shared.cap.io_command_sets()
    }

    /// One 4096-byte Identify structure.
    fn identify_raw(
        &self,
        cmd: Command,
        what: &'static str,
    ) -> Result<Box<[u8; IDENTIFY_LEN]>, Error> {
        let buf = self.shared.admin_read(cmd, IDENTIFY_LEN, what)?;
        let mut b = Box::new([0u8; IDENTIFY_LEN]);
        b.copy_from_slice(&buf.as_slice()[..IDENTIFY_LEN]);
        Ok(b)
    }

    /// A namespace ID list (CNS 02h, or 07h for `csi`), every page of it:
    /// IDs in increasing order, as the controller must report them. A
    /// device that breaks the order is believed up to where it broke it
    /// (logged).
    pub(super) fn namespace_list(&self, csi: Option<CommandSet>) -> Result<Vec<u32>, Error> {
        let mut ids = Vec::new();
        let mut after = 0u32;
        for _ in 0..MAX_LIST_PAGES {
            let page = match csi {
                None => self.identify_raw(
                    Command::identify(cns::ACTIVE_NAMESPACES, after),
                    "Identify Active Namespace List",
                )?,
                Some(cs) => self.identify_raw(
                    Command::identify_csi(cns::CSI_ACTIVE_NAMESPACES, after, cs.csi()),
                    "Identify I/O Command Set Specific Active Namespace List",
                )?,
            };
            let mut n = 0;
            for c in page.chunks_exact(4) {
                let id = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                if id == 0 {
                    break;
                }
                if id <= after || id >= 0xffff_fffe {
                    log::warn!(
                        "namespace list: ID {id:#x} after {after:#x} is out of order or reserved: \
                         the rest of the list is ignored"
                    );
                    return Ok(ids);
                }
                ids.push(id);
                after = id;
                n += 1;
            }
            // A full page may have a next one, after its last ID.
            if n < LIST_ENTRIES || after >= 0xffff_fffd {
                return Ok(ids);
            }
        }
        log::warn!("namespace list: stopped after {MAX_LIST_PAGES} full pages");
        Ok(ids)
    }

    /// IDs of the active namespaces of command set `command_set` (Identify
    /// CNS 07h). Needs a controller with I/O command sets
    /// ([`io_command_sets`](Self::io_command_sets)); a command set the
    /// controller does not know fails with the controller's status.
    pub fn active_namespaces_of(&self, command_set: CommandSet) -> Result<Vec<u32>, Error> {
        if !self.io_command_sets() {
            return Err(Error::Unsupported(
                "the controller does not support I/O command sets (CAP.CSS bit 6)",
            ));
        }
        self.namespace_list(Some(command_set))
    }

    /// The active namespaces and their command sets, in ID order. On a
    /// controller with I/O command sets, the per command set lists (CNS
    /// 07h; a set the controller does not know is skipped) say which set
    /// each namespace is in, and the descriptor list of a namespace in
    /// none of them; otherwise every namespace is an NVM one.
    pub fn list_namespaces(&self) -> Result<Vec<NamespaceEntry>, Error> {
        let ids = self.active_namespaces()?;
        if !self.io_command_sets() {
            return Ok(ids
                .into_iter()
                .map(|nsid| NamespaceEntry {
                    nsid,
                    command_set: CommandSet::Nvm,
                })
                .collect());
        }
        let mut of: HashMap<u32, CommandSet> = HashMap::new();
        for cs in [CommandSet::Nvm, CommandSet::KeyValue, CommandSet::Zoned] {
            let listed = optional(
                self.active_namespaces_of(cs),
                "Identify I/O Command Set Specific Active Namespace List",
            )?;
            for nsid in listed.unwrap_or_default() {
                of.entry(nsid).or_insert(cs);
            }
        }
        ids.into_iter()
            .map(|nsid| {
                let command_set = match of.get(&nsid) {
                    Some(&cs) => cs,
                    None => self.namespace_command_set(nsid)?,
                };
                Ok(NamespaceEntry { nsid, command_set })
            })
            .collect()
    }

    /// The Namespace Identification Descriptor list of `nsid` (CNS 03h).
    pub fn namespace_ids(&self, nsid: u32) -> Result<NamespaceIds, Error> {
        if nsid == 0 || nsid >= 0xffff_fffe {
            return Err(Error::NoNamespace { nsid });
        }
        // Parsed where the device wrote it: nothing kept but the result.
        let buf = self.shared.admin_read(
            Command::identify(cns::NAMESPACE_DESCRIPTORS, nsid),
            IDENTIFY_LEN,
            "Identify Namespace Identification Descriptor List",
        )?;
        let ids = NamespaceIds::parse(&buf.as_slice()[..IDENTIFY_LEN]);
        if ids.skipped != 0 {
            log::warn!(
                "namespace {nsid}: {} malformed or unknown identification descriptors skipped",
                ids.skipped
            );
        }
        Ok(ids)
    }

    /// The command set of namespace `nsid`: on a controller with I/O
    /// command sets, the CSI descriptor of its descriptor list (NVM if it
    /// has none, or if the controller refuses the list: logged); otherwise
    /// NVM, the only command set enabled.
    pub fn namespace_command_set(&self, nsid: u32) -> Result<CommandSet, Error> {
        Ok(self.command_set_and_ids(nsid)?.0)
    }

    /// [`namespace_command_set`](Self::namespace_command_set) and the
    /// descriptor list it was read from.
    fn command_set_and_ids(&self, nsid: u32) -> Result<(CommandSet, Option<NamespaceIds>), Error> {
        if !self.io_command_sets() {
            return Ok((CommandSet::Nvm, None));
        }
        match optional(
            self.namespace_ids(nsid),
            "Identify Namespace Identification Descriptor List",
        )? {
            Some(ids) => {
                let cs = ids.command_set().unwrap_or_else(|| {
                    log::debug!("namespace {nsid}: no CSI descriptor, taken as NVM");
                    CommandSet::Nvm
                });
                Ok((cs, Some(ids)))
            }
            None => {
                log::warn!("namespace {nsid}: no descriptor list to read its command set from: taken as NVM");
                Ok((CommandSet::Nvm, None))
            }
        }
    }

    /// The I/O Command Set specific Identify Namespace data of `nsid` for
    /// `command_set` (CNS 05h), raw.
    pub fn identify_namespace_csi(
        &self,
        nsid: u32,
        command_set: CommandSet,
    ) -> Result<Box<[u8; IDENTIFY_LEN]>, Error> {
        if nsid == 0 || nsid >= 0xffff_fffe {
            return Err(Error::NoNamespace { nsid });
        }
        self.identify_raw(
            Command::identify_csi(cns::CSI_NAMESPACE, nsid, command_set.csi()),
            "Identify I/O Command Set Specific Namespace",
        )
    }

    /// The I/O Command Set specific Identify Controller data for
    /// `command_set` (CNS 06h), raw.
    pub fn identify_controller_csi(
        &self,
        command_set: CommandSet,
    ) -> Result<Box<[u8; IDENTIFY_LEN]>, Error> {
        self.identify_raw(
            Command::identify_csi(cns::CSI_CONTROLLER, 0, command_set.csi()),
            "Identify I/O Command Set Specific Controller",
        )
    }

    /// The I/O Command Set Independent Identify Namespace data of `nsid`
    /// (CNS 08h), where the controller has it: controllers of version 2.0
    /// and up, and those with I/O command sets (some of which still refuse
    /// it, such as QEMU's up to 7.2: then `None`, and the driver asks no
    /// more). All zeroes for an inactive namespace ID.
    pub fn identify_namespace_independent(
        &self,
        nsid: u32,
    ) -> Result<Option<IdentifyNamespaceIndependent>, Error> {
        if nsid == 0 || nsid >= 0xffff_fffe {
            return Err(Error::NoNamespace { nsid });
        }
        let may_have = self.identify.ver() >= VERSION_2_0 || self.io_command_sets();
        if !may_have || !self.independent_ns.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let r = self.identify_raw(
            Command::identify(cns::INDEPENDENT_NAMESPACE, nsid),
            "Identify I/O Command Set Independent Namespace",
        );
        match optional(r, "Identify I/O Command Set Independent Namespace")? {
            Some(b) => Ok(Some(IdentifyNamespaceIndependent(b))),
            None => {
                self.independent_ns.store(false, Ordering::Relaxed);
                Ok(None)
            }
        }
    }

    /// What Identify reports about namespace `nsid`, command set aware:
    /// its command set and descriptor list, Identify Namespace for the
    /// command sets it describes (NVM, Zoned Namespace), the command set
    /// independent data where the controller has it, and for a zoned
    /// namespace the Zoned Namespace Identify Namespace and Controller data
    /// (which a controller may refuse: then `None`, logged).
    /// [`Error::NoNamespace`] if `nsid` is not an active namespace.
    pub fn namespace_info(&self, nsid: u32) -> Result<NamespaceInfo, Error> {
        self.describe_namespace(nsid, true)
    }

    /// [`namespace_info`](Self::namespace_info), with the command set
    /// independent data only if `independent` (opening a namespace has no
    /// use for it).
    pub(super) fn describe_namespace(
        &self,
        nsid: u32,
        independent: bool,
    ) -> Result<NamespaceInfo, Error> {
        let identify = match self.identify_namespace(nsid) {
            Ok(id) => Some(id),
            // Invalid I/O Command Set: Identify Namespace does not describe
            // this namespace's command set.
            Err(Error::Command { status, .. }) if status.sct() == 0 && status.sc() == 0x2c => None,
            Err(e) => return Err(e),
        };
        let nvm_active = identify.as_ref().is_some_and(|id| id.is_active());
        let (command_set, ids) = if nvm_active {
            self.command_set_and_ids(nsid)?
        } else if self.io_command_sets() {
            // Inactive, or a namespace of a command set Identify Namespace
            // does not describe: its descriptor list says which.
            let ids = match self.namespace_ids(nsid) {
                Ok(ids) => ids,
                Err(Error::Command { .. }) => return Err(Error::NoNamespace { nsid }),
                Err(e) => return Err(e),
            };
            match ids.command_set() {
                Some(cs @ (CommandSet::KeyValue | CommandSet::Other(_))) => (cs, Some(ids)),
                _ => return Err(Error::NoNamespace { nsid }),
            }
        } else {
            return Err(Error::NoNamespace { nsid });
        };
        let mut info = NamespaceInfo {
            nsid,
            command_set,
            ids,
            identify: identify.filter(|_| nvm_active),
            independent: if independent {
                self.identify_namespace_independent(nsid)?
            } else {
                None
            },
            zoned: None,
            zoned_controller: None,
        };
        if command_set == CommandSet::Zoned {
            info.zoned = optional(
                self.identify_namespace_csi(nsid, CommandSet::Zoned),
                "Zoned Namespace Identify Namespace",
            )?
            .map(IdentifyZonedNamespace);
            info.zoned_controller = optional(
                self.identify_controller_csi(CommandSet::Zoned),
                "Zoned Namespace Identify Controller",
            )?
            .map(IdentifyZonedController);
            if info.zones().is_none() {
                log::warn!("namespace {nsid} is zoned but its zone size could not be read");
            }
        }
        Ok(info)
    }
}
