//! What the software controller looks like: capabilities, limits,
//! namespaces and timing, with a builder.

use std::time::Duration;

use crate::iommu::IommuConfig;
use crate::Error;

pub use nvme_vfio::nvme::nvm::CopyLimits;

/// One RAM-backed namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NamespaceConfig {
    /// Size in logical blocks.
    pub blocks: u64,
    /// Logical block size: 512 or 4096 bytes.
    pub block_size: u32,
    /// Metadata bytes per block the current LBA format reports (0: none).
    /// Only reported in Identify: the model transfers no metadata, so this
    /// serves to test that a driver refuses such formats.
    pub metadata: u16,
    /// The namespace ID (0: its position in [`Config::namespaces`] plus
    /// one).
    pub nsid: u32,
    /// Whether the namespace is attached (active) from the start. A
    /// detached one is an inactive ID until
    /// [`SimController::attach_namespace`](crate::SimController::attach_namespace).
    pub attached: bool,
    /// Zoned: the namespace belongs to the Zoned Namespace command set
    /// (CSI 02h) instead of NVM. `None`: an NVM namespace.
    pub zoned: Option<ZoneConfig>,
}

/// The zones of a zoned namespace, with their states, write pointers and
/// resources modelled as QEMU's controller has them (see the `zones`
/// module): written sequentially at the write pointer or by Zone Append,
/// managed with Zone Management Send, listed with Report Zones. Reads work
/// anywhere inside one zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ZoneConfig {
    /// Zone size in logical blocks (the namespace size is a multiple of
    /// it).
    pub zone_blocks: u64,
    /// Most zones open at once, as Identify reports it (0: no limit).
    pub max_open: u32,
    /// Most zones active at once, as Identify reports it (0: no limit).
    pub max_active: u32,
    /// Zone capacity: the blocks of each zone that can be written (0: the
    /// zone size).
    pub capacity: u64,
}

impl NamespaceConfig {
    /// A namespace of `blocks` blocks of `block_size` bytes.
    pub const fn new(blocks: u64, block_size: u32) -> Self {
        Self {
            blocks,
            block_size,
            metadata: 0,
            nsid: 0,
            attached: true,
            zoned: None,
        }
    }

    /// The same namespace, with namespace ID `nsid`.
    pub const fn with_id(mut self, nsid: u32) -> Self {
        self.nsid = nsid;
        self
    }

    /// The same namespace, detached at first (see
    /// [`attached`](Self::attached)).
    pub const fn detached(mut self) -> Self {
        self.attached = false;
        self
    }

    /// The same namespace, zoned (Zoned Namespace command set) with zones
    /// of `zone_blocks` blocks and no limit on open or active zones.
    pub const fn zoned(mut self, zone_blocks: u64) -> Self {
        self.zoned = Some(ZoneConfig {
            zone_blocks,
            max_open: 0,
            max_active: 0,
            capacity: 0,
        });
        self
    }

    /// The same zoned namespace, with `blocks` of each zone writable (the
    /// zone capacity, at most the zone size). No effect on an NVM
    /// namespace.
    pub const fn zone_capacity(mut self, blocks: u64) -> Self {
        if let Some(z) = &mut self.zoned {
            z.capacity = blocks;
        }
        self
    }

    /// The same zoned namespace, reporting at most `max_open` open and
    /// `max_active` active zones (0: no limit). No effect on an NVM
    /// namespace.
    pub const fn zone_limits(mut self, max_open: u32, max_active: u32) -> Self {
        if let Some(z) = &mut self.zoned {
            z.max_open = max_open;
            z.max_active = max_active;
        }
        self
    }

    /// The same namespace, reporting `bytes` of metadata per block in its
    /// current LBA format.
    pub const fn with_metadata(mut self, bytes: u16) -> Self {
        self.metadata = bytes;
        self
    }
}

/// The NVM command set's Identify Controller limits the software
/// controller reports ([`Config::nvm_limits`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NvmLimitsConfig {
    /// Verify Size Limit: `2^vsl` minimum pages per Verify (0: none).
    pub vsl: u8,
    /// Write Zeroes Size Limit (0: none).
    pub wzsl: u8,
    /// Write Uncorrectable Size Limit (0: none).
    pub wusl: u8,
    /// Dataset Management Ranges Limit (0: none).
    pub dmrl: u8,
    /// Dataset Management Range Size Limit, in blocks (0: none).
    pub dmrsl: u32,
    /// Dataset Management Size Limit, in blocks (0: none).
    pub dmsl: u64,
}

/// The software controller's configuration. Start from [`Config::default`]
/// and adjust with the builder methods (or the public fields).
///
/// ```
/// use nvme_sim::{Config, NamespaceConfig};
/// let config = Config::default()
///     .namespaces(&[NamespaceConfig::new(1 << 20, 4096), NamespaceConfig::new(2048, 512)])
///     .mdts(3)
///     .sgl(false);
/// assert_eq!(config.namespaces.len(), 2);
/// ```
#[derive(Clone, Debug)]
pub struct Config {
    /// Entries per queue at most (CAP.MQES + 1), 2 to 65536.
    pub max_queue_entries: u32,
    /// CAP.CQR: I/O queues must be physically contiguous (the only kind
    /// this model supports).
    pub contiguous_queues_required: bool,
    /// CAP.TO, in units of 500 ms: the longest the host should wait for a
    /// CSTS.RDY transition.
    pub timeout_500ms: u8,
    /// CAP.DSTRD: doorbells are `4 << dstrd` bytes apart (0 to 15).
    pub doorbell_stride: u8,
    /// CAP.MPSMIN: smallest memory page size, `2^(12 + mps_min)` bytes.
    pub mps_min: u8,
    /// CAP.MPSMAX: largest memory page size, `2^(12 + mps_max)` bytes.
    pub mps_max: u8,
    /// Time from CC.EN = 1 to CSTS.RDY = 1.
    pub ready_delay: Duration,
    /// Time from CC.SHN to CSTS.SHST = complete.
    pub shutdown_delay: Duration,
    /// I/O submission and completion queues the controller can create (the
    /// most Set Features (Number of Queues) grants), 1 to 65535.
    pub max_io_queues: u16,
    /// Identify MDTS: transfers are limited to `2^mdts` minimum pages (0:
    /// no limit).
    pub mdts: u8,
    /// Whether I/O commands may use SGLs (Identify SGLS).
    pub sgl: bool,
    /// With [`sgl`](Self::sgl): whether Bit Bucket descriptors are
    /// supported (Identify SGLS bit 16): a Read discards the bytes they
    /// describe.
    pub sgl_bit_bucket: bool,
    /// The namespaces, with IDs 1, 2, ... in this order unless they name
    /// their own ([`NamespaceConfig::nsid`]).
    pub namespaces: Vec<NamespaceConfig>,
    /// Identify NN, the largest namespace ID (0: the largest ID among
    /// [`namespaces`](Self::namespaces)). IDs up to it with no attached
    /// namespace are inactive.
    pub max_nsid: u32,
    /// Whether Doorbell Buffer Config (shadow doorbells) is supported
    /// (Identify OACS bit 8).
    pub doorbell_buffer_config: bool,
    /// Whether Write Zeroes is supported (Identify ONCS bit 3).
    pub write_zeroes: bool,
    /// Whether Dataset Management (deallocate) is supported (Identify
    /// ONCS bit 2).
    pub dataset_management: bool,
    /// Whether Compare is supported (Identify ONCS bit 0): the data sent
    /// is compared with the blocks', Compare Failure if they differ.
    pub compare: bool,
    /// Whether Write Uncorrectable is supported (Identify ONCS bit 1): its
    /// blocks fail reads, compares, verifies and copies with Unrecovered
    /// Read Error until written (Write, Write Zeroes, deallocation, or as
    /// a Copy's destination).
    pub write_uncorrectable: bool,
    /// Whether Verify is supported (Identify ONCS bit 7, unless
    /// [`verify_in_oncs`](Self::verify_in_oncs) is off): Unrecovered Read
    /// Error on an uncorrectable block.
    pub verify: bool,
    /// Whether ONCS lists Verify when it is supported. Off, Verify is only
    /// in the Commands Supported and Effects log, as on QEMU's controller
    /// (up to at least 7.2).
    pub verify_in_oncs: bool,
    /// Whether Copy is supported (Identify ONCS bit 8), with source range
    /// descriptors of format 0 (OCFS bit 0), within the namespaces' copy
    /// limits ([`copy_limits`](Self::copy_limits)).
    pub copy: bool,
    /// The copy limits every namespace reports and enforces (Command Size
    /// Limit Exceeded past them, and past 256 MiB per Copy whatever they
    /// say): blocks per source range (MSSRL), blocks per Copy (MCL, 0: no
    /// limit), source ranges per Copy, 0-based (MSRC).
    pub copy_limits: CopyLimits,
    /// The NVM command set's Identify Controller limits (CNS 06h CSI 00h),
    /// reported and enforced: Verify, Write Zeroes and Write Uncorrectable
    /// sizes (`2^n` minimum pages, 0: no limit; over it, Invalid Field in
    /// Command as on QEMU's controller), and for a deallocating Dataset
    /// Management the ranges (DMRL), blocks per range (DMRSL) and blocks
    /// in all (DMSL), 0: no limit (over them, Command Size Limit
    /// Exceeded).
    pub nvm_limits: NvmLimitsConfig,
    /// Whether the Commands Supported and Effects log (log page 05h; LPA
    /// bit 1) is offered: it lists every command the controller executes.
    pub effects_log: bool,
    /// Null mode: I/O commands are checked (namespace, LBA range, MDTS,
    /// PSDT) and complete successfully without walking their data pointer
    /// or moving data; for measuring the driver's own overhead.
    pub null: bool,
    /// Identify serial number.
    pub serial: String,
    /// Whether a volatile write cache is present (Identify VWC).
    pub volatile_write_cache: bool,
    /// How long the worker polls for new doorbell writes before it sleeps:
    /// zero (the default) sleeps at once, which costs a wake-up per batch;
    /// a few microseconds trade a core for latency in benchmarks.
    pub idle_spin: Duration,
    /// Inline mode: a doorbell write runs the device on the writing thread
    /// before the write returns (the worker thread still takes CC writes
    /// and timers). No hand-off between threads per command, so the
    /// driver's next poll finds the completions: for counting the driver's
    /// own instructions (callgrind) and for tests that must see no other
    /// thread at work. Delayed completions still wait for the worker.
    pub inline: bool,
    /// The IOMMU the controller's DMA goes through, when the controller
    /// creates its own ([`SimController::new`](crate::SimController::new)).
    pub iommu: IommuConfig,
    /// CAP.CSS bit 6: the controller supports I/O command sets beyond NVM,
    /// selected with CC.CSS = 110b (as QEMU's controller does). Then it
    /// answers the command set Identify CNS values (03h's CSI descriptor,
    /// 05h to 08h), and namespaces of other command sets (zoned ones) are
    /// active only while CC.CSS = 110b. Without it, CC.CSS must be NVM and
    /// every namespace is an NVM one.
    pub io_command_sets: bool,
    /// The Zoned Namespace command set's Zone Append Size Limit (its
    /// Identify Controller data, CNS 06h CSI 02h): `2^zasl` minimum pages
    /// per Zone Append, 0 for MDTS. Over it, Invalid Field in Command, as
    /// on QEMU's controller.
    pub zasl: u8,
}

impl Default for Config {
    /// A controller like QEMU's emulated NVMe device, scaled down: 1024
    /// entries per queue, 64 I/O queues, MDTS 5 (128 KiB), SGLs, a 1 ms
    /// ready delay, and one namespace of 64 MiB in 512-byte blocks; every
    /// optional command, with QEMU's limits (Copy: 128 ranges of up to 128
    /// blocks, 128 in all; Verify: 512 KiB), and the Commands Supported and
    /// Effects log.
    fn default() -> Self {
        Self {
            max_queue_entries: 1024,
            contiguous_queues_required: true,
            timeout_500ms: 4,
            doorbell_stride: 0,
            mps_min: 0,
            mps_max: 4,
            ready_delay: Duration::from_millis(1),
            shutdown_delay: Duration::from_millis(1),
            max_io_queues: 64,
            mdts: 5,
            sgl: true,
            sgl_bit_bucket: false,
            namespaces: vec![NamespaceConfig::new(128 << 10, 512)],
            max_nsid: 0,
            doorbell_buffer_config: true,
            write_zeroes: true,
            dataset_management: true,
            compare: true,
            write_uncorrectable: true,
            verify: true,
            verify_in_oncs: true,
            copy: true,
            // QEMU's: 128 blocks per range and per Copy, 128 ranges.
            copy_limits: CopyLimits {
                mssrl: 128,
                mcl: 128,
                msrc: 127,
            },
            // QEMU's: Verify up to 512 KiB, no other limit.
            nvm_limits: NvmLimitsConfig {
                vsl: 7,
                ..NvmLimitsConfig::default()
            },
            effects_log: true,
            null: false,
            serial: "SIM0001".into(),
            volatile_write_cache: true,
            idle_spin: Duration::ZERO,
            inline: false,
            iommu: IommuConfig::default(),
            io_command_sets: true,
            zasl: 0,
        }
    }
}

impl Config {
    /// Replaces the namespaces: IDs 1, 2, ... in this order, unless they
    /// name their own.
    pub fn namespaces(mut self, namespaces: &[NamespaceConfig]) -> Self {
        self.namespaces = namespaces.to_vec();
        self
    }

    /// Sets MDTS (see [`mdts`](Self::mdts)).
    pub fn mdts(mut self, mdts: u8) -> Self {
        self.mdts = mdts;
        self
    }

    /// Sets SGL support.
    pub fn sgl(mut self, on: bool) -> Self {
        self.sgl = on;
        self
    }

    /// Sets Bit Bucket descriptor support (with SGLs).
    pub fn sgl_bit_bucket(mut self, on: bool) -> Self {
        self.sgl_bit_bucket = on;
        self
    }

    /// Sets Identify NN (see [`max_nsid`](Self::max_nsid)).
    pub fn max_nsid(mut self, nn: u32) -> Self {
        self.max_nsid = nn;
        self
    }

    /// Sets Doorbell Buffer Config support.
    pub fn doorbell_buffer_config(mut self, on: bool) -> Self {
        self.doorbell_buffer_config = on;
        self
    }

    /// Sets whether a volatile write cache is present.
    pub fn volatile_write_cache(mut self, on: bool) -> Self {
        self.volatile_write_cache = on;
        self
    }

    /// Sets Write Zeroes support.
    pub fn write_zeroes(mut self, on: bool) -> Self {
        self.write_zeroes = on;
        self
    }

    /// Sets Dataset Management support.
    pub fn dataset_management(mut self, on: bool) -> Self {
        self.dataset_management = on;
        self
    }

    /// Sets Compare support.
    pub fn compare(mut self, on: bool) -> Self {
        self.compare = on;
        self
    }

    /// Sets Write Uncorrectable support.
    pub fn write_uncorrectable(mut self, on: bool) -> Self {
        self.write_uncorrectable = on;
        self
    }

    /// Sets Verify support.
    pub fn verify(mut self, on: bool) -> Self {
        self.verify = on;
        self
    }

    /// Sets whether ONCS lists Verify ([`Config::verify_in_oncs`]).
    pub fn verify_in_oncs(mut self, on: bool) -> Self {
        self.verify_in_oncs = on;
        self
    }

    /// Sets Copy support.
    pub fn copy(mut self, on: bool) -> Self {
        self.copy = on;
        self
    }

    /// Sets the copy limits ([`Config::copy_limits`]).
    pub fn copy_limits(mut self, limits: CopyLimits) -> Self {
        self.copy_limits = limits;
        self
    }

    /// Sets the NVM command set's Identify Controller limits
    /// ([`Config::nvm_limits`]).
    pub fn nvm_limits(mut self, limits: NvmLimitsConfig) -> Self {
        self.nvm_limits = limits;
        self
    }

    /// Sets whether the Commands Supported and Effects log is offered.
    pub fn effects_log(mut self, on: bool) -> Self {
        self.effects_log = on;
        self
    }

    /// Sets CAP.MPSMIN and CAP.MPSMAX (pages of `2^(12 + n)` bytes).
    pub fn page_sizes(mut self, mps_min: u8, mps_max: u8) -> Self {
        self.mps_min = mps_min;
        self.mps_max = mps_max;
        self
    }

    /// Sets null mode.
    pub fn null(mut self, on: bool) -> Self {
        self.null = on;
        self
    }

    /// Sets the doorbell stride field (CAP.DSTRD).
    pub fn doorbell_stride(mut self, dstrd: u8) -> Self {
        self.doorbell_stride = dstrd;
        self
    }

    /// Sets the most I/O queues the controller grants.
    pub fn max_io_queues(mut self, n: u16) -> Self {
        self.max_io_queues = n;
        self
    }

    /// Sets the most entries per queue.
    pub fn max_queue_entries(mut self, n: u32) -> Self {
        self.max_queue_entries = n;
        self
    }

    /// Sets the CC.EN to CSTS.RDY delay.
    pub fn ready_delay(mut self, d: Duration) -> Self {
        self.ready_delay = d;
        self
    }

    /// Sets the CC.SHN to CSTS.SHST = complete delay.
    pub fn shutdown_delay(mut self, d: Duration) -> Self {
        self.shutdown_delay = d;
        self
    }

    /// Sets CAP.TO, in units of 500 ms.
    pub fn timeout_500ms(mut self, to: u8) -> Self {
        self.timeout_500ms = to;
        self
    }

    /// Sets the worker's idle polling time.
    pub fn idle_spin(mut self, d: Duration) -> Self {
        self.idle_spin = d;
        self
    }

    /// Sets inline mode ([`Config::inline`]).
    pub fn inline(mut self, on: bool) -> Self {
        self.inline = on;
        self
    }

    /// Sets I/O command set support ([`Config::io_command_sets`]).
    pub fn io_command_sets(mut self, on: bool) -> Self {
        self.io_command_sets = on;
        self
    }

    /// Sets the IOMMU configuration.
    pub fn iommu(mut self, iommu: IommuConfig) -> Self {
        self.iommu = iommu;
        self
    }

    /// The doorbell stride in bytes.
    pub fn stride(&self) -> u64 {
        4 << self.doorbell_stride
    }

    /// CAP as the register file reports it.
    pub fn cap(&self) -> u64 {
        (self.max_queue_entries as u64 - 1)
            | (self.contiguous_queues_required as u64) << 16
            | (self.timeout_500ms as u64) << 24
            | (self.doorbell_stride as u64) << 32
            | 1 << 37 // CSS: NVM command set
            | (self.io_command_sets as u64) << 43 // CSS: I/O command sets
            | (self.mps_min as u64) << 48
            | (self.mps_max as u64) << 52
    }

    /// With the Zone Append Size Limit `zasl` (see [`zasl`](Self::zasl)).
    pub fn zasl(mut self, zasl: u8) -> Self {
        self.zasl = zasl;
        self
    }

    /// Checks the configuration's ranges.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |what: &'static str| Err(Error::Config(what));
        if !(2..=65536).contains(&self.max_queue_entries) {
            return bad("max_queue_entries must be 2 to 65536");
        }
        if self.doorbell_stride > 15 {
            return bad("doorbell_stride must be 0 to 15");
        }
        if self.mps_min > self.mps_max || self.mps_max > 15 {
            return bad("need mps_min <= mps_max <= 15");
        }
        if self.max_io_queues == 0 || self.max_io_queues == u16::MAX {
            return bad("max_io_queues must be 1 to 65534");
        }
        if !self.contiguous_queues_required {
            return bad("only physically contiguous queues are modelled");
        }
        let ids = self.namespace_ids();
        for (i, &id) in ids.iter().enumerate() {
            if id == 0 || id == u32::MAX || ids[..i].contains(&id) {
                return bad("namespace IDs must be unique, 1 to FFFFFFFEh");
            }
        }
        if self.max_nsid != 0 && ids.iter().any(|&id| id > self.max_nsid) {
            return bad("a namespace ID is above max_nsid");
        }
        for ns in &self.namespaces {
            if ns.block_size != 512 && ns.block_size != 4096 {
                return bad("namespace block size must be 512 or 4096");
            }
            if ns.blocks == 0 || ns.blocks.checked_mul(ns.block_size as u64).is_none() {
                return bad("namespace size must be non-zero and fit 64 bits of bytes");
            }
            if let Some(z) = ns.zoned {
                if !self.io_command_sets {
                    return bad("a zoned namespace needs io_command_sets");
                }
                if z.zone_blocks == 0 || ns.blocks % z.zone_blocks != 0 {
                    return bad(
                        "a zoned namespace's size must be a multiple of a non-zero zone size",
                    );
                }
                if z.max_open != 0 && z.max_active != 0 && z.max_open > z.max_active {
                    return bad("a zoned namespace's max_open must not exceed max_active");
                }
                if z.capacity > z.zone_blocks {
                    return bad("a zoned namespace's zone capacity must not exceed its zone size");
                }
            }
        }
        Ok(())
    }

    /// The namespace IDs, in the order of [`namespaces`](Self::namespaces).
    pub fn namespace_ids(&self) -> Vec<u32> {
        let id = |(i, n): (usize, &NamespaceConfig)| match n.nsid {
            0 => i as u32 + 1,
            id => id,
        };
        self.namespaces.iter().enumerate().map(id).collect()
    }

    /// Identify NN: [`max_nsid`](Self::max_nsid), or the largest namespace
    /// ID.
    pub fn nn(&self) -> u32 {
        match self.max_nsid {
            0 => self.namespace_ids().into_iter().max().unwrap_or(0),
            nn => nn,
        }
    }

    /// The largest transfer of a command whose size limit is `2^n`
    /// minimum pages (`None`: no limit, `n` = 0).
    pub fn size_limit(&self, n: u8) -> Option<u64> {
        match n {
            0 => None,
            n => 1u64
                .checked_shl(u32::from(n) + 12 + u32::from(self.mps_min))
                .or(Some(u64::MAX)),
        }
    }

    /// The largest transfer in bytes (`None`: no limit).
    pub fn max_transfer(&self) -> Option<u64> {
        (self.mdts != 0).then(|| (1u64 << self.mdts) << (12 + self.mps_min))
    }
}
