//! The C API of the nvme-vfio driver: `libnvmevfio.so` and `libnvmevfio.a`,
//! declared by `include/nvme_vfio.h` (kept by hand; a test checks that it
//! declares exactly the functions exported here).
//!
//! Every function returns 0 (or a count) on success and a negative errno
//! value on failure, with the driver's message for the calling thread in
//! [`nvmev_last_error`]. No panic crosses the boundary: one would be
//! reported as `-EIO` (the driver does not panic on bad input; this is a
//! last guard).
//!
//! Ownership: a controller handle is shared (`Arc`) with its queue pairs,
//! so closing it before they are destroyed is safe (it shuts down when the
//! last one goes). A queue pair is used by one thread at a time.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use blk_dma::{HostAddr, HostSeg};
use nvme_vfio::ctrl::{Config, Controller, Done, Namespace, Op, QueueConfig, QueuePair};
use nvme_vfio::mem::{DmaBuf, Registration, SpaceConfig};
use nvme_vfio::Error;

mod errno;
pub use errno::status_of;

/// Options of [`nvmev_ctrl_open`] (`struct nvmev_ctrl_opts`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NvmevCtrlOpts {
    /// I/O queue pairs to ask for (0: 16).
    pub io_queues: u16,
    /// 1: interrupt mode.
    pub interrupts: u8,
    /// 1: no hugepages for DMA memory.
    pub no_hugepages: u8,
    /// I/O timeout in milliseconds (0: 30000).
    pub io_timeout_ms: u32,
}

/// A namespace (`struct nvmev_ns_info`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NvmevNsInfo {
    /// Size in logical blocks.
    pub blocks: u64,
    /// Logical block size in bytes.
    pub block_size: u32,
    /// Largest transfer of one command in bytes.
    pub max_transfer: u32,
    /// 1: zoned.
    pub zoned: u8,
    /// Zero.
    pub reserved: [u8; 7],
}

/// Options of [`nvmev_qpair_create`] (`struct nvmev_qpair_opts`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NvmevQpairOpts {
    /// Entries per queue (0: 128).
    pub depth: u16,
}

/// A completed request (`struct nvmev_completion`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NvmevCompletion {
    /// The submission's tag.
    pub tag: u64,
    /// 0, or a negative errno value.
    pub status: i32,
    /// The NVMe status field of a failed command, or 0.
    pub nvme_status: u16,
    /// Zero.
    pub reserved: u16,
}

/// A controller (`struct nvmev_ctrl`): the handle C holds.
#[derive(Debug)]
pub struct NvmevCtrl {
    inner: Arc<CtrlInner>,
}

/// What a controller handle and its queue pairs share. Fields drop in
/// order: DMA memory and registrations before the controller, the
/// simulated device last.
struct CtrlInner {
    dma: Mutex<HashMap<usize, DmaBuf>>,
    registered: Mutex<HashMap<usize, Registration>>,
    ctrl: Controller,
    #[cfg(feature = "sim")]
    _sim: Option<nvme_sim::SimController>,
}

impl std::fmt::Debug for CtrlInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CtrlInner").finish_non_exhaustive()
    }
}

impl CtrlInner {
    fn namespace(&self, nsid: u32) -> Result<Namespace, Error> {
        self.ctrl.namespace(nsid)
    }
}

/// A queue pair (`struct nvmev_qpair`).
#[derive(Debug)]
pub struct NvmevQpair {
    // Declared first: dropped (waiting for what is in flight) before the
    // controller handle.
    qp: QueuePair,
    ctrl: Arc<CtrlInner>,
    /// Namespaces looked up so far (few: a linear search).
    namespaces: Vec<Namespace>,
    /// Completions polled but not yet handed out (the caller's array was
    /// full), and those of commands run to completion at submission.
    ready: VecDeque<NvmevCompletion>,
    done: Vec<Done>,
}

impl NvmevQpair {
    fn namespace(&mut self, nsid: u32) -> Result<Namespace, Error> {
        if let Some(ns) = self.namespaces.iter().find(|n| n.id() == nsid) {
            return Ok(ns.clone());
        }
        let ns = self.ctrl.namespace(nsid)?;
        self.namespaces.push(ns.clone());
        Ok(ns)
    }

    /// Moves what the queue pair returned into `ready`, noting the last
    /// failure's message.
    fn collect(&mut self) {
        for d in self.done.drain(..) {
            let c = match &d.result {
                Ok(()) => NvmevCompletion {
                    tag: d.tag,
                    ..Default::default()
                },
                Err(e) => {
                    set_last_error(e);
                    NvmevCompletion {
                        tag: d.tag,
                        status: status_of(e),
                        nvme_status: e.status().map_or(0, |s| s.0),
                        reserved: 0,
                    }
                }
            };
            self.ready.push_back(c);
        }
    }

    /// Hands out up to `max` ready completions into `out`.
    ///
    /// # Safety
    ///
    /// `out` is valid for `max` writes.
    unsafe fn hand_out(&mut self, out: *mut NvmevCompletion, max: usize) -> c_int {
        let n = self.ready.len().min(max).min(c_int::MAX as usize);
        for i in 0..n {
            let c = self.ready.pop_front().expect("counted");
            // SAFETY: i < max: inside the caller's array.
            unsafe { out.add(i).write(c) };
        }
        n as c_int
    }

    /// A command run to completion at submission: its outcome returned
    /// and also delivered as a completion.
    fn completed_now(&mut self, tag: u64, r: Result<(), Error>) -> c_int {
        let (status, nvme_status) = match &r {
            Ok(()) => (0, 0),
            Err(e) => (status_of(e), e.status().map_or(0, |s| s.0)),
        };
        self.ready.push_back(NvmevCompletion {
            tag,
            status,
            nvme_status,
            reserved: 0,
        });
        match r {
            Ok(()) => 0,
            Err(e) => fail(&e),
        }
    }
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_message(msg: String) {
    let c = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|l| *l.borrow_mut() = c);
}

fn set_last_error(e: &Error) {
    set_last_message(error_chain(e));
}

/// The error's message and its sources', as one line.
fn error_chain(e: &Error) -> String {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        let m = s.to_string();
        if !msg.contains(&m) {
            msg.push_str(": ");
            msg.push_str(&m);
        }
        src = s.source();
    }
    msg
}

/// Records `e` for [`nvmev_last_error`] and returns its status.
fn fail(e: &Error) -> c_int {
    set_last_error(e);
    status_of(e)
}

/// Records an invalid argument and returns `-EINVAL`.
fn invalid(what: &str) -> c_int {
    set_last_message(format!("invalid argument: {what}"));
    -libc::EINVAL
}

/// Runs `f`, turning a panic into `-EIO` (none crosses into C).
fn guard(f: impl FnOnce() -> c_int) -> c_int {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => {
            set_last_message("internal error (a panic in the driver)".into());
            -libc::EIO
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The library's version, `"0.1.0"`.
#[no_mangle]
pub extern "C" fn nvmev_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// A short description of a status this API returned.
#[no_mangle]
pub extern "C" fn nvmev_strerror(status: c_int) -> *const c_char {
    errno::describe(status).as_ptr().cast()
}

/// The last failure's message on this thread (`""` if none), valid until
/// the thread's next call into the library.
#[no_mangle]
pub extern "C" fn nvmev_last_error() -> *const c_char {
    LAST_ERROR.with(|l| l.borrow().as_ptr())
}

/// Opens and brings up the controller at `addr` (see the header).
///
/// # Safety
///
/// `addr` is a NUL-terminated string; `opts` is NULL or points to a
/// `struct nvmev_ctrl_opts`; `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn nvmev_ctrl_open(
    addr: *const c_char,
    opts: *const NvmevCtrlOpts,
    out: *mut *mut NvmevCtrl,
) -> c_int {
    guard(|| {
        if addr.is_null() || out.is_null() {
            return invalid("NULL address or result pointer");
        }
        // SAFETY: a NUL-terminated string (the caller's promise).
        let Ok(addr) = unsafe { CStr::from_ptr(addr) }.to_str() else {
            return invalid("the address is not UTF-8");
        };
        // SAFETY: NULL or a valid struct (the caller's promise).
        let opts = unsafe { opts.as_ref() }.copied().unwrap_or_default();
        let mut config = Config {
            interrupts: opts.interrupts != 0,
            space: SpaceConfig {
                hugepages: opts.no_hugepages == 0,
            },
            ..Config::default()
        };
        if opts.io_queues != 0 {
            config.io_queues = opts.io_queues;
        }
        if opts.io_timeout_ms != 0 {
            config.io_timeout = Duration::from_millis(opts.io_timeout_ms.into());
        }
        match open(addr, config) {
            Ok(inner) => {
                let h = Box::new(NvmevCtrl {
                    inner: Arc::new(inner),
                });
                // SAFETY: valid for a write (the caller's promise).
                unsafe { out.write(Box::into_raw(h)) };
                0
            }
            Err(e) => fail(&e),
        }
    })
}

fn open(addr: &str, config: Config) -> Result<CtrlInner, Error> {
    #[cfg(feature = "sim")]
    if addr == "sim" {
        return open_sim(config, nvme_sim::Config::default());
    }
    #[cfg(feature = "sim")]
    if let Some(kinds) = addr.strip_prefix("sim:") {
        return open_sim(config, sim_config(kinds)?);
    }
    Ok(CtrlInner {
        dma: Mutex::default(),
        registered: Mutex::default(),
        ctrl: Controller::open(addr, config)?,
        #[cfg(feature = "sim")]
        _sim: None,
    })
}

/// The software controller of `sim:KIND[,KIND...]`: one namespace of 64
/// MiB in 512-byte blocks per kind, as `nvme_sim::NamespaceConfig::from_kind`
/// reads it: `nvm`, `zoned` (1 MiB zones, at most 8 open and 14 active),
/// or with metadata and protection information (`meta8`, `pi1`,
/// `pi2-ext`, `pi3-first`, `pi1-crc64`, `pi1-ms16`, ...).
#[cfg(feature = "sim")]
fn sim_config(kinds: &str) -> Result<nvme_sim::Config, Error> {
    let namespaces = kinds
        .split(',')
        .map(|k| {
            nvme_sim::NamespaceConfig::from_kind(k, 128 << 10, 512)
                .map_err(|e| Error::Invalid(format!("sim: {e}")))
        })
        .collect::<Result<Vec<_>, Error>>()?;
    Ok(nvme_sim::Config::default().namespaces(&namespaces))
}

/// An in-process software controller (nvme-sim's default: one namespace
/// of 64 MiB in 512-byte blocks) and the driver on it.
#[cfg(feature = "sim")]
fn open_sim(config: Config, sim_config: nvme_sim::Config) -> Result<CtrlInner, Error> {
    use nvme_sim::SimController;
    use nvme_vfio::mem::DmaSpace;
    let sim = SimController::new(sim_config)
        .map_err(|e| Error::Invalid(format!("starting the software controller: {e}")))?;
    let config = Config {
        space: SpaceConfig { hugepages: false },
        ..config
    };
    let space = DmaSpace::new(sim.iommu().clone(), config.space);
    let function = Some(sim.pci_function());
    let ctrl = if config.interrupts {
        let irqs = sim
            .interrupts(config.io_queues as usize + 1)
            .map_err(|e| Error::Invalid(format!("software controller interrupts: {e}")))?;
        // SAFETY: the registers, the IOMMU under the DMA space, the PCI
        // function and the interrupt vectors all belong to `sim`, which
        // nothing else drives and which outlives the controller (CtrlInner
        // drops it last).
        unsafe {
            Controller::with_interrupts(sim.registers(), space, config, function, Box::new(irqs))
        }?
    } else {
        // SAFETY: as above.
        unsafe { Controller::with_backend(sim.registers(), space, config, function) }?
    };
    Ok(CtrlInner {
        dma: Mutex::default(),
        registered: Mutex::default(),
        ctrl,
        _sim: Some(sim),
    })
}

/// A handle over a controller opened in Rust (for tests that need the
/// software controller's fault injection); not part of the C API.
///
/// # Safety
///
/// Whatever backs `ctrl` (a software controller) outlives the handle and
/// every queue pair created from it.
#[doc(hidden)]
pub unsafe fn handle_for(ctrl: Controller) -> *mut NvmevCtrl {
    Box::into_raw(Box::new(NvmevCtrl {
        inner: Arc::new(CtrlInner {
            dma: Mutex::default(),
            registered: Mutex::default(),
            ctrl,
            #[cfg(feature = "sim")]
            _sim: None,
        }),
    }))
}

/// Closes a controller handle.
///
/// # Safety
///
/// `ctrl` is NULL or a handle from [`nvmev_ctrl_open`] not closed yet.
#[no_mangle]
pub unsafe extern "C" fn nvmev_ctrl_close(ctrl: *mut NvmevCtrl) {
    if !ctrl.is_null() {
        guard(|| {
            // SAFETY: a handle from nvmev_ctrl_open, closed once.
            drop(unsafe { Box::from_raw(ctrl) });
            0
        });
    }
}

/// The controller behind a handle, or `-EINVAL`.
///
/// # Safety
///
/// `ctrl` is NULL or a live handle.
unsafe fn ctrl_ref<'a>(ctrl: *mut NvmevCtrl) -> Result<&'a CtrlInner, c_int> {
    // SAFETY: NULL or a live handle (the caller's promise).
    match unsafe { ctrl.as_ref() } {
        Some(c) => Ok(&c.inner),
        None => Err(invalid("NULL controller")),
    }
}

/// Runs `f` on what a handle lookup found (or returns its error), with
/// [`guard`]'s panic barrier.
fn with<T>(found: Result<T, c_int>, f: impl FnOnce(T) -> c_int) -> c_int {
    guard(|| match found {
        Ok(x) => f(x),
        Err(e) => e,
    })
}

/// Lists active namespace IDs.
///
/// # Safety
///
/// `ctrl` is a live handle; `ids` is valid for `cap` writes (or NULL with
/// `cap` 0).
#[no_mangle]
pub unsafe extern "C" fn nvmev_ctrl_namespaces(
    ctrl: *mut NvmevCtrl,
    ids: *mut u32,
    cap: usize,
) -> c_int {
    // SAFETY: the caller's promise.
    let c = unsafe { ctrl_ref(ctrl) };
    with(c, |c| {
        if ids.is_null() && cap != 0 {
            return invalid("NULL ids with a capacity");
        }
        match c.ctrl.active_namespaces() {
            Ok(list) => {
                for (i, &id) in list.iter().take(cap).enumerate() {
                    // SAFETY: i < cap: inside the caller's array.
                    unsafe { ids.add(i).write(id) };
                }
                list.len().min(c_int::MAX as usize) as c_int
            }
            Err(e) => fail(&e),
        }
    })
}

/// Describes namespace `nsid`.
///
/// # Safety
///
/// `ctrl` is a live handle; `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn nvmev_ns_info(
    ctrl: *mut NvmevCtrl,
    nsid: u32,
    out: *mut NvmevNsInfo,
) -> c_int {
    // SAFETY: the caller's promise.
    let c = unsafe { ctrl_ref(ctrl) };
    with(c, |c| {
        if out.is_null() {
            return invalid("NULL result pointer");
        }
        match c.namespace(nsid) {
            Ok(ns) => {
                let info = NvmevNsInfo {
                    blocks: ns.blocks(),
                    block_size: ns.block_size() as u32,
                    max_transfer: c.ctrl.max_transfer().min(u32::MAX.into()) as u32,
                    zoned: ns.is_zoned().into(),
                    reserved: [0; 7],
                };
                // SAFETY: valid for a write (the caller's promise).
                unsafe { out.write(info) };
                0
            }
            Err(e) => fail(&e),
        }
    })
}

/// Allocates zeroed DMA memory; NULL on failure.
///
/// # Safety
///
/// `ctrl` is a live handle.
#[no_mangle]
pub unsafe extern "C" fn nvmev_dma_alloc(ctrl: *mut NvmevCtrl, len: usize) -> *mut c_void {
    let mut p = std::ptr::null_mut();
    guard(|| {
        // SAFETY: the caller's promise.
        let c = match unsafe { ctrl_ref(ctrl) } {
            Ok(c) => c,
            Err(e) => return e,
        };
        match c.ctrl.dma_alloc(len) {
            Ok(mut buf) => {
                buf.as_mut_slice().fill(0);
                p = buf.as_mut_slice().as_mut_ptr().cast::<c_void>();
                lock(&c.dma).insert(p as usize, buf);
                0
            }
            Err(e) => fail(&e),
        }
    });
    p
}

/// Frees memory from [`nvmev_dma_alloc`].
///
/// # Safety
///
/// `ctrl` is a live handle; no I/O on `buf` is in flight.
#[no_mangle]
pub unsafe extern "C" fn nvmev_dma_free(ctrl: *mut NvmevCtrl, buf: *mut c_void) {
    if buf.is_null() {
        return;
    }
    guard(|| {
        // SAFETY: the caller's promise.
        let c = match unsafe { ctrl_ref(ctrl) } {
            Ok(c) => c,
            Err(e) => return e,
        };
        match lock(&c.dma).remove(&(buf as usize)) {
            Some(b) => {
                drop(b);
                0
            }
            None => invalid("not memory from nvmev_dma_alloc of this controller"),
        }
    });
}

/// Registers memory for DMA.
///
/// # Safety
///
/// `ctrl` is a live handle; `addr..addr+len` stays allocated until
/// [`nvmev_unregister`], and no I/O on it is in flight then.
#[no_mangle]
pub unsafe extern "C" fn nvmev_register(
    ctrl: *mut NvmevCtrl,
    addr: *mut c_void,
    len: usize,
) -> c_int {
    // SAFETY: the caller's promise.
    let c = unsafe { ctrl_ref(ctrl) };
    with(c, |c| {
        if addr.is_null() {
            return invalid("NULL address");
        }
        let mut regs = lock(&c.registered);
        if regs.contains_key(&(addr as usize)) {
            return invalid("memory already registered at this address");
        }
        // SAFETY: the memory stays allocated until nvmev_unregister drops
        // the registration, with no I/O in flight (the caller's promise).
        match unsafe { c.ctrl.space().register(addr.cast_const().cast(), len) } {
            Ok(r) => {
                regs.insert(addr as usize, r);
                0
            }
            Err(e) => fail(&e),
        }
    })
}

/// Ends a registration.
///
/// # Safety
///
/// `ctrl` is a live handle; no I/O on the memory is in flight.
#[no_mangle]
pub unsafe extern "C" fn nvmev_unregister(ctrl: *mut NvmevCtrl, addr: *mut c_void) -> c_int {
    // SAFETY: the caller's promise.
    let c = unsafe { ctrl_ref(ctrl) };
    with(c, |c| match lock(&c.registered).remove(&(addr as usize)) {
        Some(r) => {
            drop(r);
            0
        }
        None => invalid("no registration at this address"),
    })
}

/// Creates a queue pair.
///
/// # Safety
///
/// `ctrl` is a live handle; `opts` is NULL or valid; `out` is valid for a
/// write.
#[no_mangle]
pub unsafe extern "C" fn nvmev_qpair_create(
    ctrl: *mut NvmevCtrl,
    opts: *const NvmevQpairOpts,
    out: *mut *mut NvmevQpair,
) -> c_int {
    guard(|| {
        // SAFETY: the caller's promise.
        let c = match unsafe { ctrl.as_ref() } {
            Some(c) => c,
            None => return invalid("NULL controller"),
        };
        if out.is_null() {
            return invalid("NULL result pointer");
        }
        // SAFETY: NULL or valid (the caller's promise).
        let opts = unsafe { opts.as_ref() }.copied().unwrap_or_default();
        let mut config = QueueConfig::default();
        if opts.depth != 0 {
            config.depth = opts.depth;
        }
        match c.inner.ctrl.queue_pair(config) {
            Ok(qp) => {
                let h = Box::new(NvmevQpair {
                    qp,
                    ctrl: c.inner.clone(),
                    namespaces: Vec::new(),
                    ready: VecDeque::new(),
                    done: Vec::new(),
                });
                // SAFETY: valid for a write (the caller's promise).
                unsafe { out.write(Box::into_raw(h)) };
                0
            }
            Err(e) => fail(&e),
        }
    })
}

/// Destroys a queue pair.
///
/// # Safety
///
/// `qp` is NULL or a queue pair not destroyed yet, used by no other
/// thread.
#[no_mangle]
pub unsafe extern "C" fn nvmev_qpair_destroy(qp: *mut NvmevQpair) {
    if !qp.is_null() {
        guard(|| {
            // SAFETY: a queue pair from nvmev_qpair_create, destroyed once.
            drop(unsafe { Box::from_raw(qp) });
            0
        });
    }
}

/// The queue pair behind a pointer, or `-EINVAL`.
///
/// # Safety
///
/// `qp` is NULL or a live queue pair no other thread uses.
unsafe fn qp_mut<'a>(qp: *mut NvmevQpair) -> Result<&'a mut NvmevQpair, c_int> {
    // SAFETY: the caller's promise.
    match unsafe { qp.as_mut() } {
        Some(q) => Ok(q),
        None => Err(invalid("NULL queue pair")),
    }
}

/// Queues a read or write of caller memory.
///
/// # Safety
///
/// As [`nvmev_read`].
unsafe fn submit(
    qp: *mut NvmevQpair,
    op: Op,
    nsid: u32,
    lba: u64,
    buf: *const u8,
    len: usize,
    tag: u64,
) -> c_int {
    // SAFETY: the caller's promise.
    let q = unsafe { qp_mut(qp) };
    with(q, |q| {
        if buf.is_null() || len == 0 {
            return invalid("NULL or empty buffer");
        }
        let ns = match q.namespace(nsid) {
            Ok(ns) => ns,
            Err(e) => return fail(&e),
        };
        let seg = HostSeg::new(HostAddr::from_ptr(buf), len as u64);
        // SAFETY: the memory stays valid and untouched until the
        // completion is handed out or the queue pair is destroyed (the
        // caller's promise, as nvmev_read documents).
        match unsafe { q.qp.submit_raw(op, &ns, lba, &[seg], tag) } {
            Ok(()) => 0,
            Err(e) => fail(&e),
        }
    })
}

/// Queues a read.
///
/// # Safety
///
/// `qp` is a live queue pair no other thread uses; `buf` is valid for
/// writes of `len` bytes, and neither read nor written by the caller nor
/// freed until the completion with `tag` is returned or the queue pair is
/// destroyed (if that completion says the controller is dead, never).
#[no_mangle]
pub unsafe extern "C" fn nvmev_read(
    qp: *mut NvmevQpair,
    nsid: u32,
    lba: u64,
    buf: *mut c_void,
    len: usize,
    tag: u64,
) -> c_int {
    // SAFETY: the caller's promise, which is submit's.
    unsafe { submit(qp, Op::Read, nsid, lba, buf.cast_const().cast(), len, tag) }
}

/// Queues a write.
///
/// # Safety
///
/// As [`nvmev_read`], except that the caller may read `buf` meanwhile
/// (not write it).
#[no_mangle]
pub unsafe extern "C" fn nvmev_write(
    qp: *mut NvmevQpair,
    nsid: u32,
    lba: u64,
    buf: *const c_void,
    len: usize,
    tag: u64,
) -> c_int {
    // SAFETY: the caller's promise, which is submit's.
    unsafe {
        submit(
            qp,
            Op::Write { fua: false },
            nsid,
            lba,
            buf.cast(),
            len,
            tag,
        )
    }
}

/// Runs a command without caller memory to completion and queues its
/// completion.
///
/// # Safety
///
/// `qp` is NULL or a live queue pair no other thread uses.
unsafe fn run_now(
    qp: *mut NvmevQpair,
    nsid: u32,
    tag: u64,
    f: impl FnOnce(&mut QueuePair, &Namespace) -> Result<(), Error>,
) -> c_int {
    // SAFETY: the caller's promise.
    let q = unsafe { qp_mut(qp) };
    with(q, |q| {
        let r = q.namespace(nsid).and_then(|ns| f(&mut q.qp, &ns));
        q.completed_now(tag, r)
    })
}

/// Flushes the volatile write cache.
///
/// # Safety
///
/// `qp` is a live queue pair no other thread uses.
#[no_mangle]
pub unsafe extern "C" fn nvmev_flush(qp: *mut NvmevQpair, nsid: u32, tag: u64) -> c_int {
    // SAFETY: the caller's promise.
    unsafe { run_now(qp, nsid, tag, |q, ns| q.flush_cache(ns)) }
}

/// Writes zeroes.
///
/// # Safety
///
/// `qp` is a live queue pair no other thread uses.
#[no_mangle]
pub unsafe extern "C" fn nvmev_write_zeroes(
    qp: *mut NvmevQpair,
    nsid: u32,
    lba: u64,
    blocks: u64,
    tag: u64,
) -> c_int {
    // SAFETY: the caller's promise.
    unsafe { run_now(qp, nsid, tag, |q, ns| q.write_zeroes(ns, lba, blocks)) }
}

/// Deallocates blocks.
///
/// # Safety
///
/// `qp` is a live queue pair no other thread uses.
#[no_mangle]
pub unsafe extern "C" fn nvmev_deallocate(
    qp: *mut NvmevQpair,
    nsid: u32,
    lba: u64,
    blocks: u64,
    tag: u64,
) -> c_int {
    // SAFETY: the caller's promise.
    unsafe { run_now(qp, nsid, tag, |q, ns| q.deallocate(ns, &[(lba, blocks)])) }
}

/// Publishes queued requests.
///
/// # Safety
///
/// `qp` is NULL or a live queue pair no other thread uses.
#[no_mangle]
pub unsafe extern "C" fn nvmev_qpair_ring(qp: *mut NvmevQpair) {
    guard(|| {
        // SAFETY: the caller's promise.
        match unsafe { qp_mut(qp) } {
            Ok(q) => {
                q.qp.flush();
                0
            }
            Err(e) => e,
        }
    });
}

/// Polls for completions.
///
/// # Safety
///
/// `qp` is a live queue pair no other thread uses; `out` is valid for
/// `max` writes.
#[no_mangle]
pub unsafe extern "C" fn nvmev_qpair_poll(
    qp: *mut NvmevQpair,
    out: *mut NvmevCompletion,
    max: usize,
) -> c_int {
    // SAFETY: the caller's promise.
    unsafe { poll_or_wait(qp, out, max, None) }
}

/// Polls, waiting up to `timeout_ms` when nothing has completed.
///
/// # Safety
///
/// As [`nvmev_qpair_poll`].
#[no_mangle]
pub unsafe extern "C" fn nvmev_qpair_wait(
    qp: *mut NvmevQpair,
    out: *mut NvmevCompletion,
    max: usize,
    timeout_ms: u32,
) -> c_int {
    // SAFETY: the caller's promise.
    unsafe { poll_or_wait(qp, out, max, Some(Duration::from_millis(timeout_ms.into()))) }
}

/// # Safety
///
/// As [`nvmev_qpair_poll`].
unsafe fn poll_or_wait(
    qp: *mut NvmevQpair,
    out: *mut NvmevCompletion,
    max: usize,
    wait: Option<Duration>,
) -> c_int {
    // SAFETY: the caller's promise.
    let q = unsafe { qp_mut(qp) };
    with(q, |q| {
        if out.is_null() && max != 0 {
            return invalid("NULL completion array");
        }
        q.qp.flush();
        let mut done = std::mem::take(&mut q.done);
        match wait {
            Some(t) if q.ready.is_empty() => q.qp.wait(&mut done, t),
            _ => q.qp.poll(&mut done),
        };
        q.done = done;
        q.collect();
        // SAFETY: `out` is valid for `max` writes (the caller's promise).
        unsafe { q.hand_out(out, max) }
    })
}

/// Requests in flight.
///
/// # Safety
///
/// `qp` is a live queue pair no other thread uses.
#[no_mangle]
pub unsafe extern "C" fn nvmev_qpair_inflight(qp: *mut NvmevQpair) -> c_int {
    guard(|| {
        // SAFETY: the caller's promise.
        match unsafe { qp_mut(qp) } {
            Ok(q) => (q.qp.inflight() + q.ready.len()).min(c_int::MAX as usize) as c_int,
            Err(e) => e,
        }
    })
}

/// The interrupt eventfd, or -1.
///
/// # Safety
///
/// `qp` is a live queue pair no other thread uses.
#[no_mangle]
pub unsafe extern "C" fn nvmev_qpair_fd(qp: *mut NvmevQpair) -> c_int {
    use std::os::fd::AsRawFd;
    guard(|| {
        // SAFETY: the caller's promise.
        match unsafe { qp_mut(qp) } {
            Ok(q) => q.qp.interrupt_fd().map_or(-1, |fd| fd.as_raw_fd()),
            Err(e) => e,
        }
    })
}

/// Reads and clears the interrupt count.
///
/// # Safety
///
/// `qp` is a live queue pair no other thread uses.
#[no_mangle]
pub unsafe extern "C" fn nvmev_qpair_clear_interrupt(qp: *mut NvmevQpair) -> u64 {
    let mut n = 0;
    guard(|| {
        // SAFETY: the caller's promise.
        if let Ok(q) = unsafe { qp_mut(qp) } {
            n = q.qp.clear_interrupt();
        }
        0
    });
    n
}
