//! What to run against: a controller on VFIO, or nvme-sim.

use std::time::Duration;

use nvme_sim::{NamespaceConfig, SimController};
use nvme_vfio::ctrl::{Config, Controller};
use nvme_vfio::mem::{DmaSpace, SpaceConfig};
use serde::Serialize;

use super::Error;

/// The software controller's settings for a benchmark.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// Namespace size in bytes (stored sparsely; null mode stores nothing).
    pub size: u64,
    /// Block size in bytes (512 or 4096).
    pub block_size: u32,
    /// Null mode: commands are checked and completed without moving data,
    /// so what is measured is the driver.
    pub null: bool,
    /// Inline mode: the device runs on the driver's thread during the
    /// doorbell write, with no thread hand-off (for instruction counts).
    pub inline: bool,
    /// Identify MDTS (maximum transfer `2^mdts` pages; 0: no limit).
    pub mdts: u8,
    /// How long the device thread polls before sleeping.
    pub spin: Duration,
    /// A zoned namespace with zones of this many bytes (at most 8 open
    /// and 14 active, as the VM's QEMU namespace), instead of an NVM one.
    pub zone_size: Option<u64>,
    /// The namespace's kind, as nvme-sim names them
    /// ([`NamespaceConfig::from_kind`]: `nvm`, `zoned`, `meta8`, `pi1`,
    /// `pi2-ext`, `pi3-first`, `pi1-crc64`, `pi1-ms16`, ...), instead of an
    /// NVM namespace without metadata.
    pub ns_kind: Option<String>,
}

impl Default for SimOptions {
    fn default() -> Self {
        Self {
            size: 1 << 30,
            block_size: 4096,
            null: false,
            inline: false,
            mdts: 8,
            spin: Duration::from_millis(2),
            zone_size: None,
            ns_kind: None,
        }
    }
}

/// What the benchmark ran against, as reported.
#[derive(Clone, Debug, Serialize)]
pub struct TargetInfo {
    /// `"device"` or `"sim"`.
    pub kind: &'static str,
    /// The PCI address, or `"nvme-sim"`.
    pub name: String,
    /// Identify model number.
    pub model: String,
    /// Identify serial number.
    pub serial: String,
    /// Identify firmware revision.
    pub firmware: String,
    /// nvme-sim's null mode.
    pub null: bool,
    /// nvme-sim's inline mode.
    pub inline: bool,
    /// Interrupt mode.
    pub interrupts: bool,
    /// Whether shadow doorbells are in use.
    pub shadow_doorbells: bool,
    /// Largest transfer per command, in bytes.
    pub max_transfer: u64,
}

/// A controller brought up for benchmarking (and the software controller
/// behind it, for `--sim`).
#[derive(Debug)]
pub struct Target {
    // Declared first: dropped (shut down) before the software controller.
    ctrl: Controller,
    sim: Option<SimController>,
    info: TargetInfo,
}

impl Target {
    /// Opens the controller at PCI address `addr` (bound to vfio-pci) with
    /// `queues` I/O queue pairs.
    pub fn device(addr: &str, queues: u16, interrupts: bool) -> Result<Self, Error> {
        Self::open_device(addr, queues, interrupts, None)
    }

    /// Opens the controller at `addr` into `space`, the DMA space of a
    /// controller opened before (one VFIO container for both: see
    /// [`Controller::open_in`]).
    pub fn device_in(
        addr: &str,
        queues: u16,
        interrupts: bool,
        space: &std::sync::Arc<nvme_vfio::mem::DmaSpace>,
    ) -> Result<Self, Error> {
        Self::open_device(addr, queues, interrupts, Some(space))
    }

    fn open_device(
        addr: &str,
        queues: u16,
        interrupts: bool,
        space: Option<&std::sync::Arc<nvme_vfio::mem::DmaSpace>>,
    ) -> Result<Self, Error> {
        let config = Config {
            io_queues: queues.max(1),
            interrupts,
            ..Config::default()
        };
        let ctrl = match space {
            Some(space) => Controller::open_in(addr, space, config)?,
            None => Controller::open(addr, config)?,
        };
        Ok(Self::new(
            ctrl,
            None,
            "device",
            addr.to_string(),
            interrupts,
        ))
    }

    /// Starts nvme-sim with one namespace and brings the driver up on it.
    pub fn sim(o: &SimOptions, queues: u16) -> Result<Self, Error> {
        if o.block_size != 512 && o.block_size != 4096 {
            return Err(Error::Input(format!(
                "simulated block size {} (use 512 or 4096)",
                o.block_size
            )));
        }
        let blocks = o.size / o.block_size as u64;
        if blocks == 0 {
            return Err(Error::Input("simulated namespace of zero blocks".into()));
        }
        let mut ns = match &o.ns_kind {
            Some(_) if o.zone_size.is_some() => {
                return Err(Error::Input(
                    "a simulated zone size and namespace kind at once (the kind zoned has its own zones)"
                        .into(),
                ))
            }
            Some(kind) => NamespaceConfig::from_kind(kind, blocks, o.block_size)
                .map_err(|e| Error::Input(format!("simulated namespace: {e}")))?,
            None => NamespaceConfig::new(blocks, o.block_size),
        };
        if let Some(z) = o.zone_size {
            let zone_blocks = z / o.block_size as u64;
            if zone_blocks == 0 || z % o.block_size as u64 != 0 || blocks % zone_blocks != 0 {
                return Err(Error::Input(format!(
                    "simulated zone size {z}: a non-zero multiple of the block size that \
                     divides the namespace size"
                )));
            }
            ns = ns.zoned(zone_blocks).zone_limits(8, 14);
        }
        let config = nvme_sim::Config::default()
            .namespaces(&[ns])
            .null(o.null)
            .inline(o.inline)
            .mdts(o.mdts)
            .max_io_queues(queues.max(1))
            .idle_spin(o.spin);
        Self::with_sim(SimController::new(config)?, queues)
    }

    /// Brings the driver up on a software controller the caller configured
    /// (fault injection, other namespaces).
    pub fn with_sim(sim: SimController, queues: u16) -> Result<Self, Error> {
        let space = DmaSpace::new(sim.iommu().clone(), SpaceConfig { hugepages: false });
        let config = Config {
            space: SpaceConfig { hugepages: false },
            io_queues: queues.max(1),
            io_timeout: Duration::from_secs(10),
            ..Config::default()
        };
        // SAFETY: `space` maps through the model's own IOMMU, the one its device side
        // reaches memory through, and nothing else drives the model.
        let ctrl = unsafe { Controller::with_backend(sim.registers(), space, config, None) }?;
        let (null, inline) = (sim.config().null, sim.config().inline);
        let mut t = Self::new(ctrl, Some(sim), "sim", "nvme-sim".into(), false);
        t.info.null = null;
        t.info.inline = inline;
        Ok(t)
    }

    fn new(
        ctrl: Controller,
        sim: Option<SimController>,
        kind: &'static str,
        name: String,
        interrupts: bool,
    ) -> Self {
        let id = ctrl.identify();
        let info = TargetInfo {
            kind,
            name,
            model: id.model(),
            serial: id.serial(),
            firmware: id.firmware(),
            null: false,
            inline: false,
            interrupts,
            shadow_doorbells: ctrl.shadow_doorbells(),
            max_transfer: ctrl.max_transfer(),
        };
        Self { ctrl, sim, info }
    }

    /// The driver's controller.
    pub fn controller(&self) -> &Controller {
        &self.ctrl
    }

    /// The software controller, for `--sim` targets.
    pub fn sim_controller(&self) -> Option<&SimController> {
        self.sim.as_ref()
    }

    /// The description reported.
    pub fn info(&self) -> &TargetInfo {
        &self.info
    }
}
