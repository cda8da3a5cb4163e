//! Which optional commands of the NVM command set the controller supports
//! and their size limits, read once at bring-up.
//!
//! A command is supported if Identify Controller ONCS lists it (Copy also
//! needs descriptor format 0 in OCFS), or if the Commands Supported and
//! Effects log does: the log is read only when the controller has it (LPA
//! bit 1) and ONCS leaves out a command the driver knows. QEMU's
//! controller is why: up to at least 7.2 it executes Verify and lists it
//! in the log, but not in ONCS. The limits come from the NVM command set's
//! Identify Controller data (CNS 06h, CSI 00h), where the controller has
//! it (version 2.0 and up, or I/O command sets enabled); without it only
//! the commands' own fields limit them.

use super::ns::optional;
use super::Controller;
use crate::nvme::cmd::{cns, Command};
use crate::nvme::identify::IDENTIFY_LEN;
use crate::nvme::iocs::CommandSet;
use crate::nvme::nvm::{
    CommandEffects, IdentifyNvmController, NvmLimits, OptionalCommand, OptionalCommands,
    COMMAND_EFFECTS_LEN, COMMAND_EFFECTS_LOG,
};
use crate::Error;

/// LPA bit 1: the Commands Supported and Effects log page is supported.
const LPA_COMMAND_EFFECTS: u8 = 1 << 1;
/// NVMe version 2.0 in the VER format.
const VERSION_2_0: u32 = 0x0002_0000;

/// The optional commands a controller supports and their limits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct NvmSupport {
    pub(crate) commands: OptionalCommands,
    pub(crate) limits: NvmLimits,
}

impl Controller {
    /// Reads which optional commands the controller supports and their
    /// limits (at bring-up, after Identify Controller). Data the
    /// controller refuses to give is taken as absent (logged); other
    /// failures (a timeout, a dead controller) are errors.
    pub(super) fn discover_nvm_support(&self) -> Result<NvmSupport, Error> {
        let id = &self.identify;
        let mut commands = OptionalCommands::from_identify(id.oncs(), id.ocfs());
        if !commands.is_complete() && id.lpa() & LPA_COMMAND_EFFECTS != 0 {
            let log = optional(
                self.get_log_page(COMMAND_EFFECTS_LOG, u32::MAX, 0, 0, COMMAND_EFFECTS_LEN),
                "Commands Supported and Effects log",
            )?;
            if let Some(bytes) = log.filter(|b| b.len() == COMMAND_EFFECTS_LEN) {
                let mut effects = CommandEffects::default();
                effects.0.copy_from_slice(&bytes);
                let more = commands.with_effects(&effects, id.ocfs());
                if more != commands {
                    log::debug!(
                        "optional commands: {commands:?} in ONCS, {more:?} with the \
                         Commands Supported and Effects log"
                    );
                }
                commands = more;
            }
        }
        let mut limits = NvmLimits::default();
        if id.ver() >= VERSION_2_0 || self.io_command_sets() {
            let r = self.shared.admin_read(
                Command::identify_csi(cns::CSI_CONTROLLER, 0, CommandSet::Nvm.csi()),
                IDENTIFY_LEN,
                "Identify I/O Command Set Specific Controller (NVM)",
            );
            if let Some(buf) = optional(r, "NVM command set Identify Controller")? {
                let mut nvm = IdentifyNvmController::default();
                nvm.0.copy_from_slice(&buf.as_slice()[..IDENTIFY_LEN]);
                limits = NvmLimits::from_identify(&nvm, self.shared.cap.mps_min());
            }
        }
        Ok(NvmSupport { commands, limits })
    }

    /// Whether the controller supports optional command `command` (see
    /// [`OptionalCommand`]): Identify Controller ONCS lists it (and OCFS
    /// descriptor format 0 for Copy), or the Commands Supported and
    /// Effects log does. The queue pair calls refuse the others before
    /// submission ([`Error::UnsupportedCommand`]).
    pub fn supports(&self, command: OptionalCommand) -> bool {
        self.nvm.commands.contains(command)
    }

    /// The size limits of the optional commands (the NVM command set's
    /// Identify Controller data; no limits if the controller has none),
    /// by which the queue pair calls split their commands.
    pub fn nvm_limits(&self) -> NvmLimits {
        self.nvm.limits
    }
}
