//! PCI addresses, and the sysfs facts VFIO needs before it opens anything:
//! whether the device exists, which driver it is bound to, its IOMMU group
//! and the group's other members.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::VfioError;

/// The driver a device must be bound to for VFIO.
pub const VFIO_PCI_DRIVER: &str = "vfio-pci";

/// A PCI function address, `DDDD:BB:DD.F` (domain, bus, device, function).
///
/// Parses from `0000:01:00.0` or `01:00.0` (domain 0); displays in the
/// kernel's form, `0000:01:00.0`, which is also the VFIO device name.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct PciAddress {
    domain: u32,
    bus: u8,
    device: u8,
    function: u8,
}

impl PciAddress {
    /// The address `domain:bus:device.function`; `None` if the device
    /// number is over 31 or the function over 7.
    pub const fn new(domain: u32, bus: u8, device: u8, function: u8) -> Option<Self> {
        if device > 0x1f || function > 7 {
            return None;
        }
        Some(PciAddress {
            domain,
            bus,
            device,
            function,
        })
    }

    /// The PCI domain (segment).
    pub const fn domain(self) -> u32 {
        self.domain
    }

    /// The bus number.
    pub const fn bus(self) -> u8 {
        self.bus
    }

    /// The device number (0-31).
    pub const fn device(self) -> u8 {
        self.device
    }

    /// The function number (0-7).
    pub const fn function(self) -> u8 {
        self.function
    }
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

impl FromStr for PciAddress {
    type Err = VfioError;

    fn from_str(input: &str) -> Result<Self, VfioError> {
        let err = |reason| VfioError::PciAddress {
            input: input.to_owned(),
            reason,
        };
        let (head, function) = input
            .rsplit_once('.')
            .ok_or_else(|| err("missing '.function'"))?;
        let mut parts = head.split(':').rev();
        let device = parts.next().ok_or_else(|| err("missing device"))?;
        let bus = parts.next().ok_or_else(|| err("missing 'bus:'"))?;
        let domain = parts.next();
        if parts.next().is_some() {
            return Err(err("too many ':'"));
        }
        let domain = match domain {
            Some(d) => u32::from_str_radix(hex(d, 8).ok_or_else(|| err("bad domain"))?, 16)
                .map_err(|_| err("bad domain"))?,
            None => 0,
        };
        let bus = u8::from_str_radix(hex(bus, 2).ok_or_else(|| err("bad bus"))?, 16)
            .map_err(|_| err("bad bus"))?;
        let device = u8::from_str_radix(hex(device, 2).ok_or_else(|| err("bad device"))?, 16)
            .map_err(|_| err("bad device"))?;
        let function = u8::from_str_radix(hex(function, 1).ok_or_else(|| err("bad function"))?, 16)
            .map_err(|_| err("bad function"))?;
        PciAddress::new(domain, bus, device, function)
            .ok_or_else(|| err("device must be at most 1f and function at most 7"))
    }
}

/// `s` if it is 1 to `max` hex digits (no sign, no prefix).
fn hex(s: &str, max: usize) -> Option<&str> {
    (!s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_hexdigit())).then_some(s)
}

/// One device of an IOMMU group, with its driver.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct GroupMember {
    /// The device name (a PCI address for PCI devices).
    pub name: String,
    /// The bound driver, if any.
    pub driver: Option<String>,
}

/// Where sysfs is mounted: `/sys`, or a directory tree that mimics it in tests.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Sysfs {
    root: PathBuf,
}

impl Default for Sysfs {
    fn default() -> Self {
        Sysfs {
            root: PathBuf::from("/sys"),
        }
    }
}

impl Sysfs {
    /// sysfs rooted at `root` instead of `/sys`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Sysfs { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `ROOT/bus/pci/devices/ADDR`.
    pub fn device_dir(&self, addr: PciAddress) -> PathBuf {
        self.root.join("bus/pci/devices").join(addr.to_string())
    }

    /// Whether the device exists.
    pub fn device_exists(&self, addr: PciAddress) -> bool {
        self.device_dir(addr).exists()
    }

    /// The driver the device is bound to (`driver` link), `None` if unbound.
    pub fn driver(&self, addr: PciAddress) -> Result<Option<String>, VfioError> {
        link_name(&self.device_dir(addr).join("driver"))
    }

    /// The device's IOMMU group (`iommu_group` link), `None` if it has none
    /// (the IOMMU is off).
    pub fn iommu_group(&self, addr: PciAddress) -> Result<Option<u32>, VfioError> {
        let path = self.device_dir(addr).join("iommu_group");
        match link_name(&path)? {
            None => Ok(None),
            Some(name) => name.parse().map(Some).map_err(|_| VfioError::Sysfs {
                path,
                source: io::Error::new(io::ErrorKind::InvalidData, "group is not a number"),
            }),
        }
    }

    /// The devices of IOMMU group `group` with their drivers, sorted by name.
    pub fn group_members(&self, group: u32) -> Result<Vec<GroupMember>, VfioError> {
        let dir = self
            .root
            .join("kernel/iommu_groups")
            .join(group.to_string())
            .join("devices");
        let sysfs_err = |source| VfioError::Sysfs {
            path: dir.clone(),
            source,
        };
        let mut members = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(sysfs_err)? {
            let entry = entry.map_err(sysfs_err)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let driver = link_name(&entry.path().join("driver"))?;
            members.push(GroupMember { name, driver });
        }
        members.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(members)
    }

    /// Checks that the device exists, is bound to vfio-pci and has an IOMMU
    /// group; returns the group number.
    pub fn vfio_group(&self, addr: PciAddress) -> Result<u32, VfioError> {
        if !self.device_exists(addr) {
            return Err(VfioError::DeviceMissing {
                addr,
                path: self.device_dir(addr),
            });
        }
        let driver = self.driver(addr)?;
        if driver.as_deref() != Some(VFIO_PCI_DRIVER) {
            return Err(VfioError::NotBoundToVfio { addr, driver });
        }
        self.iommu_group(addr)?
            .ok_or(VfioError::NoIommuGroup { addr })
    }
}

/// The last component of the symlink `path`'s target; `None` if there is no
/// such link.
fn link_name(path: &Path) -> Result<Option<String>, VfioError> {
    match std::fs::read_link(path) {
        Ok(target) => Ok(target.file_name().map(|n| n.to_string_lossy().into_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(VfioError::Sysfs {
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn addr(s: &str) -> PciAddress {
        match s.parse() {
            Ok(a) => a,
            Err(e) => panic!("{s}: {e}"),
        }
    }

    #[test]
    fn parses_full_and_short_forms() {
        assert_eq!(addr("0000:01:00.0"), PciAddress::new(0, 1, 0, 0).unwrap());
        assert_eq!(addr("01:00.0"), addr("0000:01:00.0"));
        assert_eq!(addr("00:03.0").to_string(), "0000:00:03.0");
        let a = addr("10000:af:1f.7");
        assert_eq!(
            (a.domain(), a.bus(), a.device(), a.function()),
            (0x10000, 0xaf, 0x1f, 7)
        );
        assert_eq!(a.to_string(), "10000:af:1f.7");
        assert_eq!(addr("0000:0A:0b.1"), PciAddress::new(0, 10, 11, 1).unwrap());
    }

    #[test]
    fn rejects_bad_addresses_with_reasons() {
        for (input, reason) in [
            ("", "missing '.function'"),
            ("0000:01:00", "missing '.function'"),
            ("01.0", "missing 'bus:'"),
            ("0:0000:01:00.0", "too many ':'"),
            (
                "0000:01:20.0",
                "device must be at most 1f and function at most 7",
            ),
            (
                "0000:01:00.8",
                "device must be at most 1f and function at most 7",
            ),
            ("0000:001:00.0", "bad bus"),
            ("0000:01:00.00", "bad function"),
            ("0000:01:+0.0", "bad device"),
            ("zz:01:00.0", "bad domain"),
            ("0000:01:.0", "bad device"),
        ] {
            match input.parse::<PciAddress>() {
                Err(VfioError::PciAddress {
                    input: i,
                    reason: r,
                }) => {
                    assert_eq!((i.as_str(), r), (input, reason));
                }
                other => panic!("{input:?}: {other:?}"),
            }
        }
        let msg = "x".parse::<PciAddress>().unwrap_err().to_string();
        assert!(
            msg.contains("\"x\"") && msg.contains("DDDD:BB:DD.F"),
            "{msg}"
        );
    }

    /// A directory tree mimicking sysfs, removed on drop.
    pub(crate) struct FakeSysfs {
        pub(crate) sysfs: Sysfs,
    }

    impl FakeSysfs {
        pub(crate) fn new() -> Self {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let root = std::env::temp_dir().join(format!(
                "nvme-vfio-sysfs-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(root.join("bus/pci/devices")).unwrap();
            FakeSysfs {
                sysfs: Sysfs::new(root),
            }
        }

        /// Adds a device in `group` (if any) bound to `driver` (if any).
        pub(crate) fn add(&self, name: &str, group: Option<u32>, driver: Option<&str>) {
            let root = self.sysfs.root();
            let dev = root.join("bus/pci/devices").join(name);
            std::fs::create_dir_all(&dev).unwrap();
            if let Some(d) = driver {
                symlink(format!("../../../bus/pci/drivers/{d}"), dev.join("driver")).unwrap();
            }
            if let Some(g) = group {
                let gdir = root.join(format!("kernel/iommu_groups/{g}/devices"));
                std::fs::create_dir_all(&gdir).unwrap();
                symlink(
                    format!("../../../kernel/iommu_groups/{g}"),
                    dev.join("iommu_group"),
                )
                .unwrap();
                symlink(
                    format!("../../../../bus/pci/devices/{name}"),
                    gdir.join(name),
                )
                .unwrap();
            }
        }
    }

    impl Drop for FakeSysfs {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(self.sysfs.root());
        }
    }

    #[test]
    fn sysfs_lookup() {
        let t = FakeSysfs::new();
        t.add("0000:01:00.0", Some(7), Some("vfio-pci"));
        t.add("0000:01:00.1", Some(7), Some("snd_hda_intel"));
        t.add("0000:02:00.0", Some(8), None);
        t.add("0000:03:00.0", None, Some("vfio-pci"));
        let s = &t.sysfs;
        let a = addr("01:00.0");
        assert!(s.device_exists(a));
        assert_eq!(s.driver(a).unwrap().as_deref(), Some("vfio-pci"));
        assert_eq!(s.iommu_group(a).unwrap(), Some(7));
        assert_eq!(s.vfio_group(a).unwrap(), 7);
        assert_eq!(s.driver(addr("02:00.0")).unwrap(), None);
        assert_eq!(
            s.group_members(7).unwrap(),
            vec![
                GroupMember {
                    name: "0000:01:00.0".into(),
                    driver: Some("vfio-pci".into())
                },
                GroupMember {
                    name: "0000:01:00.1".into(),
                    driver: Some("snd_hda_intel".into())
                },
            ]
        );
        assert!(matches!(s.group_members(9), Err(VfioError::Sysfs { .. })));

        let missing = s.vfio_group(addr("0000:00:1f.7")).unwrap_err();
        assert!(
            matches!(missing, VfioError::DeviceMissing { .. }),
            "{missing:?}"
        );
        assert!(
            missing.to_string().contains("no PCI device 0000:00:1f.7"),
            "{missing}"
        );

        let wrong = s.vfio_group(addr("01:00.1")).unwrap_err();
        let msg = wrong.to_string();
        assert!(matches!(
            wrong,
            VfioError::NotBoundToVfio {
                driver: Some(_),
                ..
            }
        ));
        assert!(msg.contains("bound to snd_hda_intel"), "{msg}");
        assert!(
            msg.contains("scripts/setup-vfio.sh bind 0000:01:00.1"),
            "{msg}"
        );

        let unbound = s.vfio_group(addr("02:00.0")).unwrap_err().to_string();
        assert!(unbound.contains("bound to no driver"), "{unbound}");

        let nogroup = s.vfio_group(addr("03:00.0")).unwrap_err();
        assert!(
            matches!(nogroup, VfioError::NoIommuGroup { .. }),
            "{nogroup:?}"
        );
    }
}
