//! Memory barriers for memory the device writes by DMA.
//!
//! The driver learns that the device finished a completion queue entry by
//! its phase tag; the rest of the entry (and the data of the command it
//! completes) may be read only once the phase tag was seen. In the Rust
//! memory model an `Acquire` load of the phase tag gives that order (the
//! simulated device stores it with `Release`), but a real device is not a
//! Rust thread: its writes reach memory over PCIe, and the CPU must not
//! satisfy later loads from before it saw the phase tag. That is Linux's
//! `dma_rmb()`, which [`dma_rmb`] mirrors per architecture.

/// Orders the loads of device-written (DMA) memory before this call before
/// the loads after it, like Linux's `dma_rmb()`.
///
/// - x86_64: a compiler barrier only. x86 does not reorder a load with older
///   loads (TSO), and DMA writes to write-back memory are coherent and seen
///   in order, so Linux's `dma_rmb()` is `barrier()` there; no instruction
///   is emitted.
/// - aarch64: `dmb oshld`, exactly Linux's `dma_rmb()`. A load-acquire or
///   `fence(Acquire)` (`dmb ishld`) orders only within the inner shareable
///   domain; the device is in the outer shareable one.
/// - Under Miri, which runs no inline assembly, an acquire fence: it is
///   what the barrier means in the Rust memory model.
///
/// Other architectures do not build: their DMA read barrier has to be
/// chosen when the driver is ported.
#[inline(always)]
pub fn dma_rmb() {
    #[cfg(miri)]
    core::sync::atomic::fence(core::sync::atomic::Ordering::Acquire);
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::Acquire);
    #[cfg(all(target_arch = "aarch64", not(miri)))]
    // SAFETY: a barrier instruction: it touches no memory, stack or flags.
    unsafe {
        core::arch::asm!("dmb oshld", options(nostack, preserves_flags));
    }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("nvme-vfio: no DMA read barrier (dma_rmb) for this architecture");
