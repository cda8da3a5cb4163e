//! An in-process software NVMe controller and IOMMU.
//!
//! This crate will play the device side of the driver's hardware boundary
//! (register file, queue processing, PRP/SGL walking through a software
//! IOMMU, fault injection). It currently holds no model; the device-side
//! PRP/SGL walker it will use lives in [`nvme_vfio::nvme::walk`].
