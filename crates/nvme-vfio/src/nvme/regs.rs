//! Controller registers (NVMe Base 2.0, section 3.1): offsets in BAR0 and
//! typed values with named fields, so no call site shifts and masks.

/// Register offsets in BAR0.
pub mod offset {
    /// Controller Capabilities (64-bit).
    pub const CAP: u64 = 0x00;
    /// Version.
    pub const VS: u64 = 0x08;
    /// Interrupt Mask Set.
    pub const INTMS: u64 = 0x0c;
    /// Interrupt Mask Clear.
    pub const INTMC: u64 = 0x10;
    /// Controller Configuration.
    pub const CC: u64 = 0x14;
    /// Controller Status.
    pub const CSTS: u64 = 0x1c;
    /// Admin Queue Attributes.
    pub const AQA: u64 = 0x24;
    /// Admin Submission Queue base address (64-bit).
    pub const ASQ: u64 = 0x28;
    /// Admin Completion Queue base address (64-bit).
    pub const ACQ: u64 = 0x30;
    /// Controller Memory Buffer Location.
    pub const CMBLOC: u64 = 0x38;
    /// Controller Memory Buffer Size.
    pub const CMBSZ: u64 = 0x3c;
    /// First doorbell register.
    pub const DOORBELLS: u64 = 0x1000;
}

/// Extracts `width` bits at `shift` from `v`.
const fn bits(v: u64, shift: u32, width: u32) -> u64 {
    (v >> shift) & ((1 << width) - 1)
}

/// Controller Capabilities (CAP).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Cap(pub u64);

impl Cap {
    /// Maximum Queue Entries Supported, as a count (MQES is 0-based).
    pub const fn max_queue_entries(self) -> u32 {
        bits(self.0, 0, 16) as u32 + 1
    }
    /// Contiguous Queues Required.
    pub const fn contiguous_queues_required(self) -> bool {
        bits(self.0, 16, 1) != 0
    }
    /// Timeout (TO) for CSTS.RDY transitions, in milliseconds (units of 500).
    pub const fn timeout_ms(self) -> u64 {
        bits(self.0, 24, 8) * 500
    }
    /// Doorbell Stride: doorbells are `4 << DSTRD` bytes apart.
    pub const fn doorbell_stride(self) -> u64 {
        4 << bits(self.0, 32, 4)
    }
    /// NVM Subsystem Reset Supported.
    pub const fn nssr_supported(self) -> bool {
        bits(self.0, 36, 1) != 0
    }
    /// Command Sets Supported: bit 0 is the NVM command set, bit 6 one or
    /// more I/O command sets (CC.CSS = 110b), bit 7 no I/O command set.
    pub const fn css(self) -> u8 {
        bits(self.0, 37, 8) as u8
    }
    /// Whether the controller supports I/O command sets beyond NVM and
    /// their selection with CC.CSS = 110b (CAP.CSS bit 6, CAP bit 43).
    pub const fn io_command_sets(self) -> bool {
        self.css() & (1 << 6) != 0
    }
    /// The CC.CSS value to enable the controller with: every supported I/O
    /// command set ([`css::ALL_IO`]) when the controller supports that
    /// selection, else the NVM command set only ([`css::NVM`]).
    pub const fn css_to_select(self) -> u8 {
        if self.io_command_sets() {
            css::ALL_IO
        } else {
            css::NVM
        }
    }
    /// Memory Page Size Minimum, in bytes.
    pub const fn mps_min(self) -> u64 {
        1 << (12 + bits(self.0, 48, 4))
    }
    /// Memory Page Size Maximum, in bytes.
    pub const fn mps_max(self) -> u64 {
        1 << (12 + bits(self.0, 52, 4))
    }
    /// Controller Memory Buffer Supported.
    pub const fn cmb_supported(self) -> bool {
        bits(self.0, 57, 1) != 0
    }
}

/// Version (VS).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Version(pub u32);

impl Version {
    /// Major version.
    pub const fn major(self) -> u16 {
        (self.0 >> 16) as u16
    }
    /// Minor version.
    pub const fn minor(self) -> u8 {
        (self.0 >> 8) as u8
    }
    /// Tertiary version.
    pub const fn tertiary(self) -> u8 {
        self.0 as u8
    }
}

/// I/O Command Set Selected (CC.CSS) values.
pub mod css {
    /// The NVM command set only.
    pub const NVM: u8 = 0b000;
    /// Every I/O command set the controller supports (needs CAP.CSS bit 6).
    pub const ALL_IO: u8 = 0b110;
    /// Admin commands only (needs CAP.CSS bit 7).
    pub const ADMIN_ONLY: u8 = 0b111;
}

/// Shutdown Notification (CC.SHN).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Shutdown {
    /// No notification.
    None = 0,
    /// Normal shutdown.
    Normal = 1,
    /// Abrupt shutdown.
    Abrupt = 2,
}

/// Controller Configuration (CC).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Cc(pub u32);

impl Cc {
    /// Enable.
    pub const fn enabled(self) -> bool {
        self.0 & 1 != 0
    }
    /// With Enable set or cleared.
    pub const fn with_enable(self, on: bool) -> Self {
        Cc((self.0 & !1) | on as u32)
    }
    /// I/O Command Set Selected (see [`css`]).
    pub const fn with_css(self, css: u8) -> Self {
        Cc((self.0 & !(0x7 << 4)) | ((css as u32 & 0x7) << 4))
    }
    /// The I/O Command Set Selected field.
    pub const fn css(self) -> u8 {
        ((self.0 >> 4) & 0x7) as u8
    }
    /// Memory Page Size: `2^(12 + mps)` bytes.
    pub const fn with_mps(self, mps: u8) -> Self {
        Cc((self.0 & !(0xf << 7)) | ((mps as u32 & 0xf) << 7))
    }
    /// The Memory Page Size field.
    pub const fn mps(self) -> u8 {
        ((self.0 >> 7) & 0xf) as u8
    }
    /// Shutdown Notification.
    pub const fn with_shutdown(self, shn: Shutdown) -> Self {
        Cc((self.0 & !(0x3 << 14)) | ((shn as u32) << 14))
    }
    /// The Shutdown Notification field.
    pub const fn shutdown(self) -> u8 {
        ((self.0 >> 14) & 0x3) as u8
    }
    /// I/O Submission / Completion Queue Entry Sizes, as log2 bytes.
    pub const fn with_entry_sizes(self, iosqes: u8, iocqes: u8) -> Self {
        Cc(
            (self.0 & !(0xff << 16))
                | ((iosqes as u32 & 0xf) << 16)
                | ((iocqes as u32 & 0xf) << 20),
        )
    }
    /// The IOSQES field (log2 of the submission queue entry size).
    pub const fn iosqes(self) -> u8 {
        ((self.0 >> 16) & 0xf) as u8
    }
    /// The IOCQES field (log2 of the completion queue entry size).
    pub const fn iocqes(self) -> u8 {
        ((self.0 >> 20) & 0xf) as u8
    }
}

/// Shutdown Status (CSTS.SHST).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ShutdownStatus {
    /// Normal operation.
    Normal,
    /// Shutdown processing occurring.
    Occurring,
    /// Shutdown processing complete.
    Complete,
    /// Reserved value.
    Reserved,
}

/// Controller Status (CSTS).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Csts(pub u32);

impl Csts {
    /// Ready.
    pub const RDY: u32 = 1 << 0;
    /// Controller Fatal Status.
    pub const CFS: u32 = 1 << 1;

    /// Ready.
    pub const fn ready(self) -> bool {
        self.0 & Self::RDY != 0
    }
    /// Controller Fatal Status: the controller needs a reset.
    pub const fn fatal(self) -> bool {
        self.0 & Self::CFS != 0
    }
    /// Shutdown Status.
    pub const fn shutdown_status(self) -> ShutdownStatus {
        match (self.0 >> 2) & 0x3 {
            0 => ShutdownStatus::Normal,
            1 => ShutdownStatus::Occurring,
            2 => ShutdownStatus::Complete,
            _ => ShutdownStatus::Reserved,
        }
    }
    /// CSTS with the given Shutdown Status, for device models.
    pub const fn with_shutdown_status(self, s: ShutdownStatus) -> Self {
        let v = match s {
            ShutdownStatus::Normal => 0,
            ShutdownStatus::Occurring => 1,
            ShutdownStatus::Complete => 2,
            ShutdownStatus::Reserved => 3,
        };
        Csts((self.0 & !(0x3 << 2)) | (v << 2))
    }
}

/// Admin Queue Attributes (AQA): both sizes as entry counts.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Aqa(pub u32);

impl Aqa {
    /// AQA for queues of `sq` and `cq` entries (2 to 4096 each).
    pub const fn new(sq: u16, cq: u16) -> Self {
        Aqa(((sq as u32 - 1) & 0xfff) | (((cq as u32 - 1) & 0xfff) << 16))
    }
    /// Admin Submission Queue size in entries.
    pub const fn sq_entries(self) -> u32 {
        (self.0 & 0xfff) + 1
    }
    /// Admin Completion Queue size in entries.
    pub const fn cq_entries(self) -> u32 {
        ((self.0 >> 16) & 0xfff) + 1
    }
}

/// Offset of submission queue `qid`'s tail doorbell.
pub const fn sq_tail_doorbell(qid: u16, stride: u64) -> u64 {
    offset::DOORBELLS + (2 * qid as u64) * stride
}

/// Offset of completion queue `qid`'s head doorbell.
pub const fn cq_head_doorbell(qid: u16, stride: u64) -> u64 {
    offset::DOORBELLS + (2 * qid as u64 + 1) * stride
}

/// BAR0 of an NVMe controller, as the driver reaches it: MMIO through VFIO
/// on hardware ([`vfio::Bar`](crate::vfio::Bar)), plain memory in a device
/// model.
///
/// Accesses are infallible, as on the bus: a read the device cannot answer
/// returns all ones (what PCIe returns for a removed device, so a `CSTS` of
/// `0xffff_ffff` means the device is gone) and such a write is dropped.
/// An implementation that knows an access failed (a VFIO BAR access
/// refused) says so from then on with [`failed`](Self::failed): the
/// driver's health checks treat that as registers reading all ones (the
/// controller is stopped through its PCI function and requests fail with
/// [`Error::DeviceLost`](crate::Error::DeviceLost)).
/// Implementations must be safe to call from several threads: doorbells of
/// different queues are written concurrently.
pub trait Registers: Send + Sync {
    /// Reads the 32-bit register at `offset`.
    fn read32(&self, offset: u64) -> u32;
    /// Writes the 32-bit register at `offset`.
    fn write32(&self, offset: u64, value: u32);
    /// Reads the 64-bit register at `offset`.
    fn read64(&self, offset: u64) -> u64;
    /// Writes the 64-bit register at `offset` (low dword first).
    fn write64(&self, offset: u64, value: u64);
    /// Whether a `width`-byte access at `offset` reaches the device (in
    /// bounds and mapped). The driver checks every register and doorbell
    /// it will use at bring-up, so that no later access can fail. The
    /// default: every access does.
    fn reaches(&self, offset: u64, width: u8) -> bool {
        let _ = (offset, width);
        true
    }
    /// Whether an access has failed since the registers were set up (a
    /// read that returned all ones or a write dropped for not reaching
    /// the device, rather than as the device answered). Once true, stays
    /// true. The default: accesses never fail.
    fn failed(&self) -> bool {
        false
    }
}

/// A failed access of the BAR: logged, and remembered for
/// [`Registers::failed`].
#[cold]
#[inline(never)]
fn bar_access_failed(bar: &crate::vfio::Bar, what: &str, offset: u64, e: &crate::vfio::VfioError) {
    log::error!("BAR {what} at {offset:#x} failed: {e}");
    bar.failed.store(true, std::sync::atomic::Ordering::SeqCst);
}

impl Registers for crate::vfio::Bar {
    #[inline]
    fn read32(&self, offset: u64) -> u32 {
        crate::vfio::Bar::read32(self, offset).unwrap_or_else(|e| {
            bar_access_failed(self, "read", offset, &e);
            u32::MAX
        })
    }
    #[inline]
    fn write32(&self, offset: u64, value: u32) {
        if let Err(e) = crate::vfio::Bar::write32(self, offset, value) {
            bar_access_failed(self, "write (dropped)", offset, &e);
        }
    }
    #[inline]
    fn read64(&self, offset: u64) -> u64 {
        crate::vfio::Bar::read64(self, offset).unwrap_or_else(|e| {
            bar_access_failed(self, "read", offset, &e);
            u64::MAX
        })
    }
    #[inline]
    fn write64(&self, offset: u64, value: u64) {
        if let Err(e) = crate::vfio::Bar::write64(self, offset, value) {
            bar_access_failed(self, "write (dropped)", offset, &e);
        }
    }
    fn reaches(&self, offset: u64, width: u8) -> bool {
        crate::vfio::Bar::reaches(self, offset, width)
    }
    fn failed(&self) -> bool {
        self.failed.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_cap_decodes() {
        // CAP as QEMU 7.2's NVMe controller reports it.
        let cap = Cap(0x0040_1820_0f01_07ff);
        assert_eq!(cap.max_queue_entries(), 2048);
        assert!(cap.contiguous_queues_required());
        assert_eq!(cap.timeout_ms(), 7500);
        assert_eq!(cap.doorbell_stride(), 4);
        assert_eq!(cap.css() & 1, 1);
        // NVM, I/O command sets (bit 6) and admin only (bit 7).
        assert_eq!(cap.css(), 0xc1);
        assert!(cap.io_command_sets());
        assert_eq!(cap.css_to_select(), css::ALL_IO);
        let nvm_only = Cap(cap.0 & !(0x40 << 37));
        assert!(!nvm_only.io_command_sets());
        assert_eq!(nvm_only.css_to_select(), css::NVM);
        assert_eq!(cap.mps_min(), 4096);
        assert_eq!(cap.mps_max(), 65536);
        assert_eq!(Version(0x10400).major(), 1);
        assert_eq!(Version(0x10400).minor(), 4);
    }

    #[test]
    fn cc_and_aqa_fields() {
        assert_eq!(Cc::default().with_css(css::ALL_IO).0, 0x60);
        assert_eq!(Cc(0x60).css(), css::ALL_IO);
        let cc = Cc::default()
            .with_css(0)
            .with_mps(0)
            .with_entry_sizes(6, 4)
            .with_enable(true);
        assert_eq!(cc.0, 0x0046_0001);
        assert_eq!((cc.iosqes(), cc.iocqes()), (6, 4));
        let cc = cc.with_shutdown(Shutdown::Normal);
        assert_eq!(cc.shutdown(), 1);
        assert!(cc.enabled());
        assert!(!cc.with_enable(false).enabled());
        let aqa = Aqa::new(32, 64);
        assert_eq!(aqa.0, 0x003f_001f);
        assert_eq!((aqa.sq_entries(), aqa.cq_entries()), (32, 64));
        let csts = Csts(Csts::RDY | Csts::CFS).with_shutdown_status(ShutdownStatus::Complete);
        assert!(csts.ready() && csts.fatal());
        assert_eq!(csts.shutdown_status(), ShutdownStatus::Complete);
        assert_eq!(sq_tail_doorbell(0, 4), 0x1000);
        assert_eq!(cq_head_doorbell(0, 4), 0x1004);
        assert_eq!(sq_tail_doorbell(3, 8), 0x1030);
        assert_eq!(cq_head_doorbell(3, 8), 0x1038);
    }
}
