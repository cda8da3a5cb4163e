//! The PCI function behind a controller, beyond its registers: what the
//! driver uses to stop a device's DMA when clearing CC.EN does not.
//!
//! A controller that does not acknowledge CC.EN = 0 within CAP.TO may still
//! be fetching commands and moving data. Before any memory the device could
//! reach goes back to its owner, the driver clears Bus Master Enable (a PCI
//! function with it clear cannot start memory requests) and resets the
//! function (function level reset); only when both take is the device
//! known to be quiet.

use crate::Error;

/// Control of the PCI function a controller lives in: bus mastering and
/// function level reset. Implemented by [`vfio::Device`](crate::vfio::Device)
/// (through VFIO's config space region and `VFIO_DEVICE_RESET`) and by
/// device models.
pub trait PciFunction: Send + Sync + core::fmt::Debug {
    /// Sets (`true`) or clears (`false`) Bus Master Enable in the PCI
    /// command register. With it clear the function issues no DMA.
    fn set_bus_master(&self, enable: bool) -> Result<(), Error>;

    /// Whether Bus Master Enable is set, as read back from the function.
    fn bus_master(&self) -> Result<bool, Error>;

    /// Resets the function (function level reset or the reset VFIO
    /// offers). Returns `Ok(false)` if the function cannot be reset. After
    /// a reset the controller is disabled (CC.EN = 0) and bus mastering is
    /// off.
    fn function_reset(&self) -> Result<bool, Error>;
}

impl PciFunction for crate::vfio::Device {
    fn set_bus_master(&self, enable: bool) -> Result<(), Error> {
        if enable {
            self.enable_bus_master()?;
        } else {
            self.disable_bus_master()?;
        }
        Ok(())
    }

    fn bus_master(&self) -> Result<bool, Error> {
        Ok(self.bus_master_enabled()?)
    }

    fn function_reset(&self) -> Result<bool, Error> {
        Ok(self.reset()?)
    }
}
