#!/usr/bin/env python3
"""Guest side of scripts/bench-vm.sh: runs inside the VM (chrooted into the
host's tree), with the NVMe controller on the guest kernel's nvme driver.

1. fio (io_uring, direct I/O) on /dev/nvme0n1 for each workload;
2. scripts/setup-vfio.sh bind: the controller moves to vfio-pci;
3. nvme-bench --device for the same workloads (pool buffers; user buffers
   too for the 4 KiB random reads, the per-I/O IOVA mapping cost), fio
   through the nvme-vfio engine (the .so in $FIO_ENGINE) for the same
   workloads, and the clock comparison below;
4. scripts/setup-vfio.sh reset.

The clock comparison: nvme-bench at 4 KiB random read QD 1 stamping with
clock_gettime (--clock monotonic) and with the TSC (--clock tsc), each
twice for half the time (A B B A), and which clock --clock auto picks;
the guest's clock source and whether it was booted with tsc=reliable are
reported with it. With "clocks", only that (steps 2 to 4).

Prints one line "NVME-BENCH-VM <json>" with every result for the host.
Usage: bench-guest.py NVME_BENCH SECONDS [all|clocks]
"""

import glob
import json
import os
import subprocess
import sys
import time

BDF = "0000:00:03.0"
WORKLOADS = [
    # name, rw (fio and nvme-bench spell these alike), bs, qd
    ("4k-randread-qd1", "randread", "4k", 1),
    ("4k-randread-qd32", "randread", "4k", 32),
    ("128k-read-qd8", "read", "128k", 8),
]


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def wait_for(path, seconds=20):
    end = time.time() + seconds
    while time.time() < end:
        if glob.glob(path):
            return glob.glob(path)[0]
        time.sleep(0.2)
    raise SystemExit(f"bench-guest: {path} did not appear")


def fio(dev, rw, bs, qd, secs, engine=None):
    """fio on the kernel's block device with io_uring, or (engine: the
    nvme-vfio engine's .so) on the controller through the driver."""
    if engine:
        target = [f"--ioengine=external:{engine}", "--thread=1",
                  f"--filename=trtype=PCIe traddr={BDF.replace(':', '.')} ns=1"]
    else:
        target = [f"--filename={dev}", "--ioengine=io_uring", "--direct=1"]
    cmd = [
        "fio", "--name=kernel", *target, f"--rw={rw}", f"--bs={bs}", f"--iodepth={qd}",
        f"--runtime={secs}", "--time_based", "--norandommap", "--randrepeat=0",
        "--output-format=json",
    ]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"bench-guest: {' '.join(cmd)} failed: {p.stderr.strip()}")
    out = p.stdout
    j = json.loads(out[out.index("{"):])
    job = j["jobs"][0]
    r = job["read"]
    lat = r["clat_ns"]["percentile"]
    ios = r["total_ios"]
    cpu_s = (job["usr_cpu"] + job["sys_cpu"]) / 100.0 * secs
    return {
        "iops": r["iops"],
        "mib_per_s": r["bw_bytes"] / (1 << 20),
        "lat_mean_ns": r["lat_ns"]["mean"],
        "p50_ns": lat.get("50.000000", 0),
        "p99_ns": lat.get("99.000000", 0),
        "cpu_ns_per_io": cpu_s * 1e9 / ios if ios else 0,
    }


def bench(binary, rw, bs, qd, secs, extra=()):
    cmd = [binary, "--device", BDF, f"--rw={rw}", f"--bs={bs}", f"--qd={qd}",
           f"--time={secs * 1000:.0f}ms", "--json", "--no-progress", *extra]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"bench-guest: {' '.join(cmd)} failed: {p.stderr.strip()}")
    j = json.loads(p.stdout)
    r = j["result"]
    return {
        "clock": j["workload"]["clock"],
        "ios": r["ios"],
        "seconds": r["seconds"],
        "iops": r["iops"],
        "mib_per_s": r["mib_per_s"],
        "lat_mean_ns": r["latency_ns"]["mean"],
        "p50_ns": r["latency_ns"]["p50"],
        "p99_ns": r["latency_ns"]["p99"],
        "cpu_ns_per_io": r["cpu_ns_per_io"],
        "sq_mmio_per_io": r["sq_mmio_per_io"],
    }


def clocks(binary, secs):
    """nvme-bench at 4 KiB random read QD 1 with each clock, and the one
    --clock auto picks (a short run), with the guest's clock source."""
    with open("/sys/devices/system/clocksource/clocksource0/current_clocksource") as f:
        source = f.read().strip()
    with open("/proc/cmdline") as f:
        reliable = "tsc=reliable" in f.read().split()
    r = {"clocksource": source, "tsc_reliable": reliable}
    # Each clock for half the time twice, in the order A B B A, so that
    # what drifts during the four runs falls on both alike.
    runs = {"monotonic": [], "tsc": []}
    for clock in ("monotonic", "tsc", "tsc", "monotonic"):
        log(f"nvme-bench 4k-randread-qd1 --clock {clock} (clock source {source})")
        runs[clock].append(bench(binary, "randread", "4k", 1, secs / 2, [f"--clock={clock}"]))
    for clock, (a, b) in runs.items():
        ios = a["ios"] + b["ios"]
        r[clock] = {
            "clock": a["clock"],
            "iops": ios / (a["seconds"] + b["seconds"]),
            "p50_ns": (a["p50_ns"] + b["p50_ns"]) / 2,
            "cpu_ns_per_io": (a["cpu_ns_per_io"] * a["ios"] + b["cpu_ns_per_io"] * b["ios"]) / ios
            if ios else 0,
        }
        if a["clock"] != b["clock"]:
            r[clock]["clock"] = f"{a['clock']}+{b['clock']}"
    p = subprocess.run([binary, "--device", BDF, "--qd=1", "--ios=200", "--json",
                        "--no-progress"], capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"bench-guest: nvme-bench --clock auto failed: {p.stderr.strip()}")
    r["auto"] = json.loads(p.stdout)["workload"]["clock"]
    return r


def main():
    binary, secs = sys.argv[1], int(sys.argv[2])
    mode = sys.argv[3] if len(sys.argv) > 3 else "all"
    if mode not in ("all", "clocks"):
        raise SystemExit(f"bench-guest: unknown mode {mode!r} (all or clocks)")
    engine = os.environ.get("FIO_ENGINE")
    results = {"seconds": secs, "kernel": {}, "vfio": {}, "vfio_irq": {}, "vfio_user": {},
               "engine": {}}
    dev = wait_for("/dev/nvme*n1")
    log(f"kernel nvme driver: {dev}")
    if mode == "all":
        for name, rw, bs, qd in WORKLOADS:
            log(f"fio {name}")
            results["kernel"][name] = fio(dev, rw, bs, qd, secs)
    env = dict(os.environ, HUGEMEM="128")
    subprocess.run(["scripts/setup-vfio.sh", "bind", BDF], check=True, env=env,
                   stdout=sys.stderr)
    results["clocks"] = clocks(binary, secs)
    for name, rw, bs, qd in WORKLOADS if mode == "all" else ():
        log(f"nvme-bench {name}")
        results["vfio"][name] = bench(binary, rw, bs, qd, secs)
        log(f"nvme-bench {name} --interrupts")
        results["vfio_irq"][name] = bench(binary, rw, bs, qd, secs, ["--interrupts"])
        if bs == "4k":
            log(f"nvme-bench {name} --buffers user")
            results["vfio_user"][name] = bench(binary, rw, bs, qd, secs, ["--buffers=user"])
        if engine:
            log(f"fio {name} --ioengine=external:nvme-vfio")
            results["engine"][name] = fio(None, rw, bs, qd, secs, engine)
    subprocess.run(["scripts/setup-vfio.sh", "reset", BDF], check=True, env=env,
                   stdout=sys.stderr)
    print("NVME-BENCH-VM " + json.dumps(results), flush=True)


if __name__ == "__main__":
    main()
