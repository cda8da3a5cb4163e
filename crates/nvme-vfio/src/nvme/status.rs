//! The completion status field (NVMe Base 2.1, 4.2.3): status code type
//! (SCT), status code (SC), Command Retry Delay (CRD), More (M) and Do Not
//! Retry (DNR), with a name and a one-line message for every status code
//! the specifications define: the base specification's generic, command
//! specific, media and data integrity and path related values, and those
//! of the NVM, Zoned Namespace and Key Value command sets.
//!
//! Status codes 80h to BFh of the command specific type belong to the I/O
//! command set of the command: a PCIe controller posts them for I/O
//! commands. [`Status::name`] names them by the NVM and Zoned Namespace
//! command sets; [`Status::name_for`] with [`CommandKind::Admin`] does not
//! (an admin command has no such status in those sets).

use core::fmt;

/// Status Code Type values.
pub mod sct {
    /// Generic Command Status.
    pub const GENERIC: u8 = 0;
    /// Command Specific Status.
    pub const COMMAND_SPECIFIC: u8 = 1;
    /// Media and Data Integrity Errors.
    pub const MEDIA: u8 = 2;
    /// Path Related Status.
    pub const PATH: u8 = 3;
    /// Vendor Specific.
    pub const VENDOR: u8 = 7;
}

/// Which queue a command went to: the meaning of some command specific
/// status codes depends on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CommandKind {
    /// An admin command (submission queue 0).
    Admin,
    /// An I/O command (NVM or Zoned Namespace command set).
    Io,
}

impl CommandKind {
    /// The kind of a command submitted to submission queue `sqid`.
    pub const fn of_queue(sqid: u16) -> Self {
        if sqid == 0 {
            CommandKind::Admin
        } else {
            CommandKind::Io
        }
    }
}

/// A completion's status field (bits 15:1 of the CQE's dword 3): status
/// code (7:0), status code type (10:8), Command Retry Delay (12:11), More
/// (13) and Do Not Retry (14).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Status(pub u16);

/// One status code: its value, name and message.
type Entry = (u8, &'static str, &'static str);

/// Generic Command Status (SCT 0), Base 2.1 Figure 102, and the I/O
/// command set specific generic values (80h to BFh: base, NVM and Key Value
/// command sets).
#[rustfmt::skip]
const GENERIC: &[Entry] = &[
    (0x00, "Successful Completion", "the command completed without error"),
    (0x01, "Invalid Command Opcode", "the opcode is reserved or not supported"),
    (0x02, "Invalid Field in Command", "a field of the command holds a reserved or unsupported value"),
    (0x03, "Command ID Conflict", "the command identifier is already in use"),
    (0x04, "Data Transfer Error", "moving the command's data or metadata failed"),
    (0x05, "Commands Aborted due to Power Loss Notification", "the command was aborted by a power loss notification"),
    (0x06, "Internal Error", "the command failed because of an internal error of the controller"),
    (0x07, "Command Abort Requested", "an Abort command aborted the command"),
    (0x08, "Command Aborted due to SQ Deletion", "the command was aborted because its submission queue was deleted"),
    (0x09, "Command Aborted due to Failed Fused Command", "the other command of the fused operation failed"),
    (0x0a, "Command Aborted due to Missing Fused Command", "the adjacent entry of the submission queue did not hold the other fused command"),
    (0x0b, "Invalid Namespace or Format", "the namespace, or the format of that namespace, is invalid"),
    (0x0c, "Command Sequence Error", "the command breaks the protocol of a sequence of commands"),
    (0x0d, "Invalid SGL Segment Descriptor", "an SGL Segment or SGL Last Segment descriptor is invalid"),
    (0x0e, "Invalid Number of SGL Descriptors", "an SGL segment descriptor is not the last descriptor of its segment"),
    (0x0f, "Data SGL Length Invalid", "the data SGL is too short, or longer than the transfer and the controller does not allow that"),
    (0x10, "Metadata SGL Length Invalid", "the metadata SGL is too short, or longer than the transfer and the controller does not allow that"),
    (0x11, "SGL Descriptor Type Invalid", "the controller does not support the type of an SGL descriptor"),
    (0x12, "Invalid Use of Controller Memory Buffer", "the controller does not support this use of its memory buffer"),
    (0x13, "PRP Offset Invalid", "the offset of a PRP entry is invalid"),
    (0x14, "Atomic Write Unit Exceeded", "the length exceeds the atomic write unit"),
    (0x15, "Operation Denied", "the command was denied for lack of access rights"),
    (0x16, "SGL Offset Invalid", "the offset in an SGL descriptor is invalid"),
    (0x18, "Host Identifier Inconsistent Format", "64-bit and 128-bit host identifiers are in use on different controllers"),
    (0x19, "Keep Alive Timer Expired", "the keep alive timer expired"),
    (0x1a, "Keep Alive Timeout Invalid", "the keep alive timeout value is invalid"),
    (0x1b, "Command Aborted due to Preempt and Abort", "a Reservation Acquire command (preempt and abort) aborted the command"),
    (0x1c, "Sanitize Failed", "the last sanitize operation failed and no recovery action has completed"),
    (0x1d, "Sanitize In Progress", "the command is prohibited while a sanitize operation is in progress"),
    (0x1e, "SGL Data Block Granularity Invalid", "the address alignment or length granularity of an SGL data block is invalid"),
    (0x1f, "Command Not Supported for Queue in CMB", "the command is not supported for a queue in the controller memory buffer"),
    (0x20, "Namespace is Write Protected", "the command is prohibited while the namespace is write protected"),
    (0x21, "Command Interrupted", "the controller interrupted the command's processing; it may be retried"),
    (0x22, "Transient Transport Error", "a transient transport error occurred; the command may be retried"),
    (0x23, "Command Prohibited by Command and Feature Lockdown", "the Command and Feature Lockdown prohibits the command"),
    (0x24, "Admin Command Media Not Ready", "the admin command needs the media, which is not ready"),
    (0x25, "Invalid Key Tag", "the KEYTAG field holds an invalid value"),
    (0x26, "Host Dispersed Namespace Support Not Enabled", "the command is prohibited while host dispersed namespace support is not enabled"),
    (0x27, "Host Identifier Not Initialized", "the host identifier has not been set"),
    (0x28, "Incorrect Key", "the key associated with the KEYTAG field is incorrect"),
    (0x29, "FDP Disabled", "the command is not allowed while Flexible Data Placement is disabled"),
    (0x2a, "Invalid Placement Handle List", "a placement handle names an invalid or restricted reclaim unit handle, or there are too many"),
    (0x80, "LBA Out of Range", "the command names a logical block past the end of the namespace"),
    (0x81, "Capacity Exceeded", "the command would exceed the capacity of the namespace"),
    (0x82, "Namespace Not Ready", "the namespace is not ready to be accessed"),
    (0x83, "Reservation Conflict", "a reservation held on the namespace conflicts with the command"),
    (0x84, "Format In Progress", "a Format NVM command is in progress on the namespace"),
    (0x85, "Invalid Value Size", "the value size is invalid (Key Value command set)"),
    (0x86, "Invalid Key Size", "the key size is invalid (Key Value command set)"),
    (0x87, "KV Key Does Not Exist", "the key does not exist (Key Value command set)"),
    (0x88, "Unrecovered Error", "the key value pair could not be recovered from the media (Key Value command set)"),
    (0x89, "Key Exists", "the key already exists (Key Value command set)"),
];

/// Command Specific Status (SCT 1), 00h to 7Fh: Base 2.1 Figure 103.
#[rustfmt::skip]
const SPECIFIC: &[Entry] = &[
    (0x00, "Completion Queue Invalid", "the completion queue named by the command does not exist"),
    (0x01, "Invalid Queue Identifier", "the queue identifier is in use, out of range or not allowed here"),
    (0x02, "Invalid Queue Size", "the queue size is zero or larger than the controller supports (CAP.MQES)"),
    (0x03, "Abort Command Limit Exceeded", "more Abort commands are outstanding than the controller allows (ACL)"),
    (0x05, "Asynchronous Event Request Limit Exceeded", "more Asynchronous Event Requests are outstanding than the controller allows (AERL)"),
    (0x06, "Invalid Firmware Slot", "the firmware slot is invalid or read only"),
    (0x07, "Invalid Firmware Image", "the firmware image is invalid and was not loaded"),
    (0x08, "Invalid Interrupt Vector", "the interrupt vector is invalid"),
    (0x09, "Invalid Log Page", "the log page is not supported or reserved"),
    (0x0a, "Invalid Format", "the format (LBA format, protection information) is not supported"),
    (0x0b, "Firmware Activation Requires Conventional Reset", "the firmware was committed; activating it needs a conventional reset"),
    (0x0c, "Invalid Queue Deletion", "the completion queue cannot be deleted (queue 0, or submission queues still use it)"),
    (0x0d, "Feature Identifier Not Saveable", "the feature has no saveable value"),
    (0x0e, "Feature Not Changeable", "the feature cannot be changed"),
    (0x0f, "Feature Not Namespace Specific", "the feature applies to the whole controller, not to a namespace"),
    (0x10, "Firmware Activation Requires NVM Subsystem Reset", "the firmware was committed; activating it needs an NVM subsystem reset"),
    (0x11, "Firmware Activation Requires Controller Level Reset", "the firmware was committed; activating it needs a controller level reset"),
    (0x12, "Firmware Activation Requires Maximum Time Violation", "activating the firmware now would take longer than the maximum time for firmware activation (MTFA)"),
    (0x13, "Firmware Activation Prohibited", "the controller prohibits activating the firmware image"),
    (0x14, "Overlapping Range", "the ranges given overlap (pieces of a firmware image, LBA ranges)"),
    (0x15, "Namespace Insufficient Capacity", "creating the namespace needs more free capacity than is available"),
    (0x16, "Namespace Identifier Unavailable", "no namespace identifier is left"),
    (0x18, "Namespace Already Attached", "the namespace is already attached to the controller"),
    (0x19, "Namespace Is Private", "the namespace is private and already attached to a controller"),
    (0x1a, "Namespace Not Attached", "the namespace is not attached to the controller"),
    (0x1b, "Thin Provisioning Not Supported", "the controller does not support thin provisioning"),
    (0x1c, "Controller List Invalid", "the controller list holds an invalid controller identifier"),
    (0x1d, "Device Self-test In Progress", "a device self-test operation is already in progress"),
    (0x1e, "Boot Partition Write Prohibited", "the boot partition is write protected"),
    (0x1f, "Invalid Controller Identifier", "the controller identifier is invalid"),
    (0x20, "Invalid Secondary Controller State", "the action is invalid in the secondary controller's state"),
    (0x21, "Invalid Number of Controller Resources", "the number of flexible resources is invalid"),
    (0x22, "Invalid Resource Identifier", "a resource identifier is invalid"),
    (0x23, "Sanitize Prohibited While Persistent Memory Region is Enabled", "a sanitize operation is prohibited while the persistent memory region is enabled"),
    (0x24, "ANA Group Identifier Invalid", "the ANA group identifier is invalid"),
    (0x25, "ANA Attach Failed", "an asymmetric namespace access condition prevents attaching the namespace"),
    (0x26, "Insufficient Capacity", "the operation needs more free capacity than is available"),
    (0x27, "Namespace Attachment Limit Exceeded", "attaching the namespace would exceed its limit of attached controllers"),
    (0x28, "Prohibition of Command Execution Not Supported", "the controller does not support prohibiting command execution"),
    (0x29, "I/O Command Set Not Supported", "the I/O command set is not supported"),
    (0x2a, "I/O Command Set Not Enabled", "the I/O command set is not enabled"),
    (0x2b, "I/O Command Set Combination Rejected", "the combination of I/O command sets is rejected"),
    (0x2c, "Invalid I/O Command Set", "the I/O command set is invalid"),
    (0x2d, "Identifier Unavailable", "no Endurance Group or NVM Set identifier is left"),
    (0x2f, "Invalid Discovery Information", "an extended discovery information entry does not apply to the entity type"),
    (0x30, "Zoning Data Structure Locked", "the zoning data structure is locked on the centralized discovery controller"),
    (0x31, "Zoning Data Structure Not Found", "the zoning data structure does not exist on the centralized discovery controller"),
    (0x32, "Insufficient Discovery Resources", "the discovery controller has no room for more discovery information entries"),
    (0x33, "Requested Function Disabled", "the requested function (fabric zoning) is disabled"),
    (0x34, "ZoneGroup Originator Invalid", "the ZoneGroup originator does not match the host that sent the command"),
    (0x37, "Invalid Controller Data Queue", "the controller data queue identifier is invalid"),
    (0x38, "Not Enough Resources", "the controller lacks the resources to process the command"),
    (0x39, "Controller Suspended", "the operation is not allowed while the controller is suspended"),
    (0x3a, "Controller Not Suspended", "the operation is allowed only while the controller is suspended"),
    (0x3b, "Controller Data Queue Full", "a controller data queue became full"),
];

/// Command Specific Status (SCT 1), 80h to BFh, of I/O commands: the NVM
/// command set's (NVM Command Set 1.1, Figure 30) and the Zoned Namespace
/// command set's (ZNS Command Set 1.2, Figure 29).
#[rustfmt::skip]
const SPECIFIC_IO: &[Entry] = &[
    (0x80, "Conflicting Attributes", "the attributes of the command conflict"),
    (0x81, "Invalid Protection Information", "the protection information settings do not fit the namespace's protection information format"),
    (0x82, "Attempted Write to Read Only Range", "the logical block range holds read only blocks"),
    (0x83, "Command Size Limit Exceeded", "the command exceeds a size limit of the namespace (ranges, blocks, or bytes)"),
    (0x85, "Incompatible Namespace or Format", "a source namespace and the destination namespace have incompatible formats"),
    (0x86, "Fast Copy Not Possible", "a source range asked for fast copy only, which the controller cannot do"),
    (0x87, "Overlapping I/O Range", "a source logical block range overlaps the destination range"),
    (0x89, "Insufficient Resources", "a resource shortage prevented the copy"),
    (0xb6, "Invalid Zone Operation Request", "the zone operation is invalid in the zone's state"),
    (0xb7, "ZRWA Resources Unavailable", "no zone random write area is available"),
    (0xb8, "Zone Boundary Error", "the command's logical blocks span more than one zone"),
    (0xb9, "Zone Is Full", "the zone is in the Full state"),
    (0xba, "Zone Is Read Only", "the zone is in the Read Only state"),
    (0xbb, "Zone Is Offline", "the zone is in the Offline state"),
    (0xbc, "Zone Invalid Write", "the write does not start at the zone's write pointer"),
    (0xbd, "Too Many Active Zones", "the controller allows no more active zones"),
    (0xbe, "Too Many Open Zones", "the controller allows no more open zones"),
    (0xbf, "Invalid Zone State Transition", "the zone cannot go from its state to the one asked for"),
];

/// Media and Data Integrity Errors (SCT 2): Base 2.1 Figure 104 and the
/// NVM command set's.
#[rustfmt::skip]
const MEDIA: &[Entry] = &[
    (0x80, "Write Fault", "the write data could not be committed to the media"),
    (0x81, "Unrecovered Read Error", "the read data could not be recovered from the media"),
    (0x82, "End-to-end Guard Check Error", "the protection information guard check failed"),
    (0x83, "End-to-end Application Tag Check Error", "the protection information application tag check failed"),
    (0x84, "End-to-end Reference Tag Check Error", "the protection information reference tag check failed"),
    (0x85, "Compare Failure", "the data did not match in a Compare command"),
    (0x86, "Access Denied", "access to the namespace or the logical blocks is denied for lack of access rights"),
    (0x87, "Deallocated or Unwritten Logical Block", "the range holds a deallocated or unwritten logical block"),
    (0x88, "End-to-End Storage Tag Check Error", "the protection information storage tag check failed"),
];

/// Path Related Status (SCT 3): Base 2.1 Figure 105.
#[rustfmt::skip]
const PATH: &[Entry] = &[
    (0x00, "Internal Path Error", "an internal error of the controller's path to the namespace"),
    (0x01, "Asymmetric Access Persistent Loss", "the namespace is in the ANA Persistent Loss state for this controller"),
    (0x02, "Asymmetric Access Inaccessible", "the namespace is in the ANA Inaccessible state for this controller"),
    (0x03, "Asymmetric Access Transition", "the namespace is changing its ANA state for this controller; retry later"),
    (0x60, "Controller Pathing Error", "the controller detected a pathing error"),
    (0x70, "Host Pathing Error", "the host detected a pathing error"),
    (0x71, "Command Aborted By Host", "the host aborted the command"),
];

const VENDOR: Entry = (
    0,
    "Vendor Specific",
    "a vendor specific status: see the device's documentation",
);
const RESERVED: Entry = (0, "Reserved", "a status code the specification reserves");
const RESERVED_TYPE: Entry = (
    0,
    "Reserved Status Code Type",
    "a status code type the specification reserves",
);
const ADMIN_SET_SPECIFIC: Entry = (
    0,
    "I/O Command Set Specific",
    "a command specific status of an I/O command set, which names none for admin commands",
);

/// The entry for `sc` in `table` (sorted by code).
const fn find(table: &'static [Entry], sc: u8) -> Option<Entry> {
    let mut i = 0;
    while i < table.len() {
        if table[i].0 == sc {
            return Some(table[i]);
        }
        i += 1;
    }
    None
}

impl Status {
    /// Successful completion.
    pub const SUCCESS: Status = Status(0);

    /// Bit 13: More.
    const MORE: u16 = 1 << 13;
    /// Bit 14: Do Not Retry.
    const DNR: u16 = 1 << 14;
    /// Bits 12:11: Command Retry Delay.
    const CRD_SHIFT: u16 = 11;

    /// A status of type `sct` and code `sc`, with `dnr`.
    pub const fn new(sct: u8, sc: u8, dnr: bool) -> Self {
        Status(sc as u16 | ((sct as u16 & 0x7) << 8) | (dnr as u16) << 14)
    }

    /// The same status with the More bit set or cleared.
    pub const fn with_more(self, more: bool) -> Self {
        Status(self.0 & !Self::MORE | if more { Self::MORE } else { 0 })
    }

    /// The same status with the Do Not Retry bit set or cleared.
    pub const fn with_dnr(self, dnr: bool) -> Self {
        Status(self.0 & !Self::DNR | if dnr { Self::DNR } else { 0 })
    }

    /// The same status with Command Retry Delay `crd` (0 to 3; higher bits
    /// are ignored).
    pub const fn with_crd(self, crd: u8) -> Self {
        Status(self.0 & !(0x3 << Self::CRD_SHIFT) | ((crd as u16 & 0x3) << Self::CRD_SHIFT))
    }

    /// Status Code.
    pub const fn sc(self) -> u8 {
        self.0 as u8
    }

    /// Status Code Type: 0 generic, 1 command specific, 2 media and data
    /// integrity, 3 path related, 7 vendor specific (see [`sct`]).
    pub const fn sct(self) -> u8 {
        ((self.0 >> 8) & 0x7) as u8
    }

    /// Command Retry Delay: 0 to retry at once, 1 to 3 to wait the time in
    /// Command Retry Delay Time 1 to 3 (CRDT1 to CRDT3 of Identify
    /// Controller, in 100 ms units) before a retry.
    pub const fn crd(self) -> u8 {
        ((self.0 >> Self::CRD_SHIFT) & 0x3) as u8
    }

    /// More: the Error Information log page holds more about the failure
    /// (see [`Controller::error_log_for`](crate::ctrl::Controller::error_log_for)).
    pub const fn more(self) -> bool {
        self.0 & Self::MORE != 0
    }

    /// Do Not Retry: the same command would fail again.
    pub const fn dnr(self) -> bool {
        self.0 & Self::DNR != 0
    }

    /// Whether the command succeeded.
    pub const fn is_success(self) -> bool {
        self.sct() == 0 && self.sc() == 0
    }

    /// Whether this is a vendor specific status (status code type 7, or a
    /// status code of C0h to FFh of the other defined types).
    pub const fn is_vendor_specific(self) -> bool {
        self.sct() == sct::VENDOR || (self.sct() <= sct::PATH && self.sc() >= 0xc0)
    }

    const fn entry(self, kind: CommandKind) -> Entry {
        let sc = self.sc();
        if self.is_vendor_specific() {
            return VENDOR;
        }
        let found = match self.sct() {
            sct::GENERIC => find(GENERIC, sc),
            sct::COMMAND_SPECIFIC if sc < 0x80 => find(SPECIFIC, sc),
            sct::COMMAND_SPECIFIC => match kind {
                CommandKind::Io => find(SPECIFIC_IO, sc),
                CommandKind::Admin => Some(ADMIN_SET_SPECIFIC),
            },
            sct::MEDIA => find(MEDIA, sc),
            sct::PATH => find(PATH, sc),
            _ => Some(RESERVED_TYPE),
        };
        match found {
            Some(e) => e,
            None => RESERVED,
        }
    }

    /// The specification's name for this status. Command specific codes
    /// 80h to BFh are named as the NVM and Zoned Namespace command sets
    /// name them for I/O commands (see [`name_for`](Self::name_for)).
    pub const fn name(self) -> &'static str {
        self.entry(CommandKind::Io).1
    }

    /// A one-line explanation of this status (lower case, no final stop).
    pub const fn message(self) -> &'static str {
        self.entry(CommandKind::Io).2
    }

    /// The name of this status for a command of `kind`.
    pub const fn name_for(self, kind: CommandKind) -> &'static str {
        self.entry(kind).1
    }

    /// The message of this status for a command of `kind`.
    pub const fn message_for(self, kind: CommandKind) -> &'static str {
        self.entry(kind).2
    }

    /// This status as displayed for a command of `kind`: like
    /// [`Display`](fmt::Display), with the name for that kind.
    pub const fn display_for(self, kind: CommandKind) -> StatusFor {
        StatusFor { status: self, kind }
    }

    fn fmt_for(self, kind: CommandKind, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (SCT {:#x}, SC {:#04x}",
            self.name_for(kind),
            self.sct(),
            self.sc()
        )?;
        if self.dnr() {
            f.write_str(", do not retry")?;
        }
        if self.crd() != 0 {
            write!(f, ", retry after CRDT{}", self.crd())?;
        }
        if self.more() {
            f.write_str(", more info in the error log")?;
        }
        f.write_str(")")
    }
}

/// A [`Status`] displayed for a kind of command
/// ([`Status::display_for`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusFor {
    status: Status,
    kind: CommandKind,
}

impl fmt::Display for StatusFor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.status.fmt_for(self.kind, f)
    }
}

impl fmt::Debug for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Status {{ sct: {}, sc: {:#04x} ({}), crd: {}, more: {}, dnr: {} }}",
            self.sct(),
            self.sc(),
            self.name(),
            self.crd(),
            self.more(),
            self.dnr()
        )
    }
}

/// `Name (SCT 0x2, SC 0x81, do not retry, retry after CRDT1, more info in
/// the error log)`: the flags only when set.
impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.fmt_for(CommandKind::Io, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_sorted_unique_and_one_line() {
        for table in [GENERIC, SPECIFIC, SPECIFIC_IO, MEDIA, PATH] {
            for w in table.windows(2) {
                assert!(w[0].0 < w[1].0, "{:#04x} then {:#04x}", w[0].0, w[1].0);
            }
            for &(sc, name, message) in table {
                assert!(!name.is_empty() && !message.is_empty(), "{sc:#04x}");
                assert!(!message.contains('\n') && !message.ends_with('.'), "{name}");
                assert!(
                    message.starts_with(|c: char| c.is_lowercase() || c.is_ascii_digit()),
                    "{name}: {message}"
                );
                assert!(message.len() < 120, "{name}: one short line");
            }
        }
    }

    #[test]
    fn fields_and_flags() {
        let s = Status::new(1, 0xbc, true).with_more(true).with_crd(2);
        assert_eq!(
            (s.sct(), s.sc(), s.dnr(), s.more(), s.crd()),
            (1, 0xbc, true, true, 2)
        );
        assert_eq!(s.0, 0x01bc | 1 << 14 | 1 << 13 | 2 << 11);
        let s = s.with_more(false).with_dnr(false).with_crd(0);
        assert_eq!(s, Status::new(1, 0xbc, false));
        assert_eq!(
            Status::new(1, 0xbc, true).with_more(true).to_string(),
            "Zone Invalid Write (SCT 0x1, SC 0xbc, do not retry, more info in the error log)"
        );
        assert_eq!(
            Status::new(0, 0x21, false).with_crd(1).to_string(),
            "Command Interrupted (SCT 0x0, SC 0x21, retry after CRDT1)"
        );
        assert_eq!(
            format!("{:?}", Status::new(2, 0x81, true)),
            "Status { sct: 2, sc: 0x81 (Unrecovered Read Error), crd: 0, more: false, dnr: true }"
        );
    }

    #[test]
    fn unknown_and_vendor_codes() {
        assert_eq!(Status::new(0, 0x17, false).name(), "Reserved");
        assert_eq!(Status::new(1, 0x04, false).name(), "Reserved");
        assert_eq!(Status::new(2, 0x00, false).name(), "Reserved");
        assert_eq!(Status::new(3, 0x50, false).name(), "Reserved");
        assert_eq!(Status::new(7, 0x01, false).name(), "Vendor Specific");
        assert_eq!(Status::new(0, 0xc5, false).name(), "Vendor Specific");
        assert_eq!(
            Status::new(5, 0x01, false).name(),
            "Reserved Status Code Type"
        );
        assert!(Status::new(7, 0, false).is_vendor_specific());
        assert!(!Status::new(2, 0x81, false).is_vendor_specific());
    }

    #[test]
    fn command_specific_codes_depend_on_the_kind_of_command() {
        let s = Status::new(1, 0x82, false);
        assert_eq!(s.name(), "Attempted Write to Read Only Range");
        assert_eq!(s.name_for(CommandKind::Io), s.name());
        assert_eq!(s.name_for(CommandKind::Admin), "I/O Command Set Specific");
        assert_eq!(
            s.display_for(CommandKind::Admin).to_string(),
            "I/O Command Set Specific (SCT 0x1, SC 0x82)"
        );
        // Codes below 80h mean the same for both.
        let q = Status::new(1, 0x01, true);
        assert_eq!(q.name_for(CommandKind::Admin), "Invalid Queue Identifier");
        assert_eq!(q.name_for(CommandKind::Io), "Invalid Queue Identifier");
        assert_eq!(CommandKind::of_queue(0), CommandKind::Admin);
        assert_eq!(CommandKind::of_queue(3), CommandKind::Io);
    }
}
