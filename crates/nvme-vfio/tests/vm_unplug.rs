//! Hot unplug of a controller in use, through real VFIO: nvme-bench runs
//! on the controller while QEMU unplugs it (QMP `device_del` on the PCIe
//! root port it sits behind). The kernel asks the driver for the device
//! back (VFIO's device request interrupt); nvme-bench must end with a
//! clear error within a second of that, and the guest must finish the
//! unplug (the process let go of the device).
//!
//! Runs in the VM's `hot-unplug` scenario (scripts/test.sh:
//! `scripts/vm/run.sh --hotplug`, nvme-bench's path in `NVME_BENCH`);
//! elsewhere it says it is skipped.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The kernel's words when it asks a VFIO user for the device back
/// (vfio-pci's request callback).
const REQUEST_LOG: &str = "Relaying device request to user";

/// The vfio-pci function of class NVMe.
fn nvme_on_vfio() -> Option<String> {
    let dir = std::fs::read_dir("/sys/bus/pci/drivers/vfio-pci").ok()?;
    dir.flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(':') && n.contains('.'))
        .find(|n| {
            std::fs::read_to_string(format!("/sys/bus/pci/devices/{n}/class"))
                .is_ok_and(|c| c.trim() == "0x010802")
        })
}

/// Sends the time each new kernel log record containing `needle` is read
/// (a thread reading /dev/kmsg from its end).
fn watch_kernel_log(needle: &'static str) -> mpsc::Receiver<Instant> {
    let (tx, rx) = mpsc::channel();
    let mut f = std::fs::File::open("/dev/kmsg").expect("open /dev/kmsg");
    // Only records from now on.
    std::io::Seek::seek(&mut f, std::io::SeekFrom::End(0)).expect("seek /dev/kmsg");
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 8192];
        // One record per read.
        while let Ok(n) = f.read(&mut buf) {
            if n > 0 && String::from_utf8_lossy(&buf[..n]).contains(needle) {
                let _ = tx.send(Instant::now());
            }
        }
    });
    rx
}

/// The last records of the guest kernel's log (for a failure's message).
fn guest_log_tail() -> String {
    match Command::new("dmesg").output() {
        Ok(o) => {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(40)..].join("\n")
        }
        Err(e) => format!("(dmesg: {e})"),
    }
}

fn wait_for_file(path: &Path, within: Duration) -> Option<String> {
    let start = Instant::now();
    while start.elapsed() < within {
        if let Ok(s) = std::fs::read_to_string(path) {
            return Some(s.trim().to_owned());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[test]
fn hot_unplug_ends_nvme_bench_promptly_and_completes() {
    if std::env::var("NVME_VM_SCENARIO").as_deref() != Ok("hot-unplug") {
        eprintln!("skipped: needs the VM's hot-unplug scenario (scripts/vm/run.sh --hotplug)");
        return;
    }
    let ctl = PathBuf::from(std::env::var("VM_CTL").expect("VM_CTL (run.sh --hotplug)"));
    let bench = std::env::var("NVME_BENCH").expect("NVME_BENCH: path of nvme-bench");
    let bdf = nvme_on_vfio().expect("an NVMe function on vfio-pci");
    let requests = watch_kernel_log(REQUEST_LOG);

    let mut child = Command::new(&bench)
        .args(["--device", &bdf, "--rw", "randread", "--qd", "32"])
        .args(["--time", "120", "--no-progress"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start nvme-bench");
    let mut stderr = child.stderr.take().unwrap();
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        child.try_wait().unwrap().is_none(),
        "nvme-bench ended before the unplug: {}",
        err_reader.join().unwrap()
    );

    std::fs::write(ctl.join("unplug"), "nvme0").expect("ask the host for the unplug");
    let asked = requests
        .recv_timeout(Duration::from_secs(90))
        .expect("the kernel never asked for the device back");
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(10),
            "nvme-bench still runs 10 s after the kernel asked for the device"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    let took = asked.elapsed();
    let err = err_reader.join().unwrap();
    eprintln!("nvme-bench ended {took:?} after the device request; its stderr:\n{err}");
    assert!(
        took < Duration::from_secs(1),
        "nvme-bench took {took:?} to end"
    );
    assert!(!status.success(), "nvme-bench must fail: {status}");
    assert!(
        err.contains("device lost"),
        "the error says what happened: {err}"
    );

    let outcome = wait_for_file(&ctl.join("unplugged"), Duration::from_secs(150))
        .expect("the host never reported the unplug's outcome");
    assert_eq!(
        outcome,
        "ok",
        "QEMU's unplug; the guest's kernel log:\n{}",
        guest_log_tail()
    );
    assert!(
        !Path::new(&format!("/sys/bus/pci/devices/{bdf}")).exists(),
        "the guest still has {bdf}"
    );
}
