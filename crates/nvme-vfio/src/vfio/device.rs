//! A VFIO PCI device: opening it by address, its regions (BARs, config
//! space), reset and interrupts.

use std::fs::File;
use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use vfio_bindings::bindings::vfio as b;

use super::bar::Bar;
use super::container::Container;
use super::group::Group;
use super::info::{self, RegionInfo};
use super::irq::Msix;
use super::pci::{PciAddress, Sysfs};
use super::sys;
use super::VfioError;

/// PCI command register (config offset 0x04) and its bits (PCI Local Bus
/// spec 3.0, 6.2.2).
const PCI_COMMAND: u64 = 0x04;
/// Command: respond to memory-space accesses (BARs).
pub const PCI_COMMAND_MEMORY: u16 = 1 << 1;
/// Command: the device may master the bus (DMA).
pub const PCI_COMMAND_MASTER: u16 = 1 << 2;
/// Command: INTx emulation disabled (we use MSI-X).
pub const PCI_COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// Status register; bit 4 says a capability list exists.
const PCI_STATUS: u64 = 0x06;
const PCI_STATUS_CAP_LIST: u16 = 1 << 4;
/// Offset of the first capability pointer.
const PCI_CAPABILITY_LIST: u64 = 0x34;
/// Capability ID of MSI-X.
pub const PCI_CAP_ID_MSIX: u8 = 0x11;

/// A PCI device opened through VFIO.
///
/// Keeps its group, and so its [`Container`], open. BAR mappings and MSI-X
/// vectors obtained from it stay valid after it is dropped.
#[derive(Debug)]
pub struct Device {
    file: Arc<File>,
    addr: PciAddress,
    info: b::vfio_device_info,
    config: RegionInfo,
    // After `file`: fields drop in order, so the device file closes before
    // the group is detached.
    group: Arc<Group>,
}

impl Device {
    /// Opens the device at `addr` (`0000:01:00.0` or `01:00.0`) in a new
    /// container.
    ///
    /// Checks, in order, with an error saying what to do for each: the
    /// device exists, is bound to vfio-pci, has an IOMMU group; the group
    /// file can be opened and the group is viable; VFIO offers the Type1v2
    /// IOMMU.
    pub fn open(addr: &str) -> Result<Device, VfioError> {
        Device::open_with_sysfs(addr.parse()?, Sysfs::default())
    }

    /// [`Device::open`] with sysfs looked up under another root.
    pub fn open_with_sysfs(addr: PciAddress, sysfs: Sysfs) -> Result<Device, VfioError> {
        let group = sysfs.vfio_group(addr)?;
        let (_, group) = Container::create(sysfs, group)?;
        Device::from_group(addr, group)
    }

    /// Opens the device at `addr` in an existing container (sharing its
    /// IOMMU mappings), attaching its group if needed.
    pub fn open_in(container: &Arc<Container>, addr: PciAddress) -> Result<Device, VfioError> {
        let group = container.sysfs().vfio_group(addr)?;
        Device::from_group(addr, container.group(group)?)
    }

    fn from_group(addr: PciAddress, group: Arc<Group>) -> Result<Device, VfioError> {
        let file = group.device_file(addr)?;
        let info = sys::device_get_info(&file).map_err(VfioError::ioctl("VFIO_DEVICE_GET_INFO"))?;
        let config = region_info(&file, b::VFIO_PCI_CONFIG_REGION_INDEX)?;
        Ok(Device {
            file: Arc::new(file),
            addr,
            info,
            config,
            group,
        })
    }

    /// The device's PCI address.
    pub fn address(&self) -> PciAddress {
        self.addr
    }

    /// The container (IOMMU address space) the device is in.
    pub fn container(&self) -> &Arc<Container> {
        self.group.container()
    }

    /// The device's IOMMU group number.
    pub fn group_number(&self) -> u32 {
        self.group.number()
    }

    /// Number of regions (BARs, ROM, config, VGA for vfio-pci).
    pub fn num_regions(&self) -> u32 {
        self.info.num_regions
    }

    /// Whether VFIO can reset the device (VFIO_DEVICE_FLAGS_RESET).
    pub fn can_reset(&self) -> bool {
        self.info.flags & b::VFIO_DEVICE_FLAGS_RESET != 0
    }

    /// What the kernel says about region `index` (BAR n is index n).
    pub fn region_info(&self, index: u32) -> Result<RegionInfo, VfioError> {
        region_info(&self.file, index)
    }

    /// Maps BAR `index` (its mmap-able areas).
    pub fn map_bar(&self, index: u32) -> Result<Bar, VfioError> {
        if index > b::VFIO_PCI_BAR5_REGION_INDEX {
            return Err(VfioError::RegionNotMappable {
                index,
                reason: "not a BAR (0-5)",
            });
        }
        Bar::map(&self.file, &self.region_info(index)?)
    }

    /// Checks a config access and returns its file offset.
    fn config_pos(&self, op: &'static str, offset: u64, len: usize) -> Result<u64, VfioError> {
        let in_bounds = offset
            .checked_add(len as u64)
            .is_some_and(|end| end <= self.config.size);
        match self.config.offset.checked_add(offset) {
            Some(pos) if in_bounds => Ok(pos),
            _ => Err(VfioError::Config {
                op,
                offset,
                len,
                source: io::Error::new(io::ErrorKind::InvalidInput, "outside config space"),
            }),
        }
    }

    /// Reads `buf.len()` bytes of config space at `offset`.
    pub fn read_config(&self, offset: u64, buf: &mut [u8]) -> Result<(), VfioError> {
        let pos = self.config_pos("read", offset, buf.len())?;
        self.file
            .read_exact_at(buf, pos)
            .map_err(|source| VfioError::Config {
                op: "read",
                offset,
                len: buf.len(),
                source,
            })
    }

    /// Writes `buf` to config space at `offset` (vfio-pci filters what
    /// reaches the device).
    pub fn write_config(&self, offset: u64, buf: &[u8]) -> Result<(), VfioError> {
        let pos = self.config_pos("write", offset, buf.len())?;
        self.file
            .write_all_at(buf, pos)
            .map_err(|source| VfioError::Config {
                op: "write",
                offset,
                len: buf.len(),
                source,
            })
    }

    /// The little-endian `u16` at config `offset`.
    pub fn config_u16(&self, offset: u64) -> Result<u16, VfioError> {
        let mut v = [0; 2];
        self.read_config(offset, &mut v)?;
        Ok(u16::from_le_bytes(v))
    }

    /// Writes a little-endian `u16` at config `offset`.
    pub fn set_config_u16(&self, offset: u64, value: u16) -> Result<(), VfioError> {
        self.write_config(offset, &value.to_le_bytes())
    }

    /// The little-endian `u32` at config `offset`.
    pub fn config_u32(&self, offset: u64) -> Result<u32, VfioError> {
        let mut v = [0; 4];
        self.read_config(offset, &mut v)?;
        Ok(u32::from_le_bytes(v))
    }

    /// Sets Memory Space, Bus Master and INTx Disable in the command
    /// register; returns the register as read back.
    pub fn enable_bus_master(&self) -> Result<u16, VfioError> {
        let cmd = self.config_u16(PCI_COMMAND)?;
        let want = PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER | PCI_COMMAND_INTX_DISABLE;
        if cmd & want != want {
            self.set_config_u16(PCI_COMMAND, cmd | want)?;
        }
        self.config_u16(PCI_COMMAND)
    }

    /// Sets Memory Space and INTx Disable in the command register (BAR
    /// access without bus mastering); returns the register as read back.
    pub fn enable_memory_space(&self) -> Result<u16, VfioError> {
        let cmd = self.config_u16(PCI_COMMAND)?;
        let want = PCI_COMMAND_MEMORY | PCI_COMMAND_INTX_DISABLE;
        if cmd & want != want {
            self.set_config_u16(PCI_COMMAND, cmd | want)?;
        }
        self.config_u16(PCI_COMMAND)
    }

    /// Clears Bus Master Enable in the command register: the function
    /// can start no more DMA. Returns the register as read back.
    pub fn disable_bus_master(&self) -> Result<u16, VfioError> {
        let cmd = self.config_u16(PCI_COMMAND)?;
        if cmd & PCI_COMMAND_MASTER != 0 {
            self.set_config_u16(PCI_COMMAND, cmd & !PCI_COMMAND_MASTER)?;
        }
        self.config_u16(PCI_COMMAND)
    }

    /// Whether Bus Master Enable is set in the command register.
    pub fn bus_master_enabled(&self) -> Result<bool, VfioError> {
        Ok(self.config_u16(PCI_COMMAND)? & PCI_COMMAND_MASTER != 0)
    }

    /// The config offset of the first capability with `id` in the standard
    /// capability list, if present.
    pub fn find_capability(&self, id: u8) -> Result<Option<u64>, VfioError> {
        if self.config_u16(PCI_STATUS)? & PCI_STATUS_CAP_LIST == 0 {
            return Ok(None);
        }
        let mut ptr = u64::from(self.config_u16(PCI_CAPABILITY_LIST)? & 0xfc);
        // 48 capabilities fill the 192 bytes after the header: a longer
        // walk is a loop in a broken list.
        for _ in 0..48 {
            if ptr < 0x40 {
                break;
            }
            let header = self.config_u16(ptr)?;
            if header as u8 == id {
                return Ok(Some(ptr));
            }
            ptr = u64::from((header >> 8) as u8 & 0xfc);
        }
        Ok(None)
    }

    /// Resets the device if VFIO can (VFIO_DEVICE_RESET); returns whether
    /// it did. A reset clears the command register and the controller
    /// state.
    pub fn reset(&self) -> Result<bool, VfioError> {
        if !self.can_reset() {
            return Ok(false);
        }
        sys::device_reset(&self.file).map_err(VfioError::ioctl("VFIO_DEVICE_RESET"))?;
        Ok(true)
    }

    /// How many MSI-X vectors the device offers.
    pub fn msix_vectors(&self) -> Result<u32, VfioError> {
        Msix::available(&self.file)
    }

    /// Enables MSI-X vectors `0..count`, each signalling an eventfd.
    pub fn enable_msix(&self, count: u32) -> Result<Msix, VfioError> {
        Msix::enable(Arc::clone(&self.file), count)
    }

    /// Arms the device request interrupt (`VFIO_PCI_REQ_IRQ_INDEX`): the
    /// returned eventfd becomes readable when the kernel asks for the
    /// device back (it is being hot unplugged, or unbound from vfio-pci).
    /// The kernel waits until every user has let go of the device: its
    /// file closed and its BARs unmapped (see [`release`](Self::release)
    /// and [`Bar::release`]), asking again every 10 seconds or so.
    /// `Ok(None)` if the device has no such interrupt.
    pub fn request_notifier(&self) -> Result<Option<OwnedFd>, VfioError> {
        let info = sys::device_get_irq_info(&self.file, b::VFIO_PCI_REQ_IRQ_INDEX)
            .map_err(VfioError::ioctl("VFIO_DEVICE_GET_IRQ_INFO"))?;
        if info.count == 0 || info.flags & b::VFIO_IRQ_INFO_EVENTFD == 0 {
            return Ok(None);
        }
        let fd = OwnedFd::from(super::irq::eventfd().map_err(VfioError::Eventfd)?);
        sys::device_set_irqs_eventfd(
            &self.file,
            b::VFIO_PCI_REQ_IRQ_INDEX,
            &[std::os::fd::AsFd::as_fd(&fd)],
        )
        .map_err(VfioError::ioctl("VFIO_DEVICE_SET_IRQS"))?;
        Ok(Some(fd))
    }

    /// Lets go of the device while this `Device` (and [`Msix`] vectors
    /// obtained from it) may still be in use: the device's file
    /// descriptor is replaced, in place, by one of `/dev/null`, so the
    /// kernel sees the device closed once BAR mappings are released too
    /// ([`Bar::release`]). From then on config space accesses, resets and
    /// interrupt settings fail; nothing reaches the device. For a device
    /// the kernel asks back ([`request_notifier`](Self::request_notifier)),
    /// once the driver has stopped it.
    pub fn release(&self) -> Result<(), VfioError> {
        let null = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map_err(VfioError::Release)?;
        // SAFETY: both descriptors are open and owned (`null` here, the
        // device's by `self.file`); dup3 atomically makes the device's
        // number refer to /dev/null, which `self.file` then owns and
        // closes as before. No Rust object relies on what the number
        // referred to, only on it being open.
        let r = unsafe { libc::dup3(null.as_raw_fd(), self.file.as_raw_fd(), libc::O_CLOEXEC) };
        if r < 0 {
            return Err(VfioError::Release(io::Error::last_os_error()));
        }
        Ok(())
    }
}

/// VFIO_DEVICE_GET_REGION_INFO for `index`, capabilities included.
fn region_info(device: &File, index: u32) -> Result<RegionInfo, VfioError> {
    let buf = info::query(
        size_of::<b::vfio_region_info>(),
        |buf| buf.set_u32(std::mem::offset_of!(b::vfio_region_info, index), index),
        |buf| sys::device_get_region_info(device, buf),
    )
    .map_err(VfioError::ioctl("VFIO_DEVICE_GET_REGION_INFO"))?;
    info::parse_region_info(&buf).map_err(|reason| VfioError::Malformed {
        what: "region info",
        reason,
    })
}
