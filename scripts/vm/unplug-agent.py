#!/usr/bin/env python3
"""Host side of scripts/vm/run.sh --hotplug.

    unplug-agent.py QMP_SOCKET CTL_DIR

Waits for the guest's command to write a QEMU device id into CTL_DIR/unplug,
asks QEMU to unplug that device (QMP device_del: the guest sees the hot
unplug of a PCIe device, as when a disk is pulled after pressing its slot's
attention button), waits for QEMU's DEVICE_DELETED event (the guest
finished the unplug) and writes the outcome into CTL_DIR/unplugged: "ok",
or "error: ..." (then the reason is also on stderr). Runs until killed, or
until it has answered one request.
"""

import json
import os
import socket
import sys
import time

CONNECT_TIMEOUT = 30.0
DELETE_TIMEOUT = 120.0


def answer(ctl, text):
    tmp = os.path.join(ctl, "unplugged.tmp")
    with open(tmp, "w") as f:
        f.write(text + "\n")
    os.rename(tmp, os.path.join(ctl, "unplugged"))


class Qmp:
    def __init__(self, path):
        deadline = time.monotonic() + CONNECT_TIMEOUT
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self.buf = b""
        self.events = []
        self.message(None)  # the greeting
        self.command("qmp_capabilities")

    def message(self, deadline):
        while b"\n" not in self.buf:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("no answer from QEMU")
                self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("QEMU closed the monitor")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def command(self, name, **arguments):
        msg = {"execute": name}
        if arguments:
            msg["arguments"] = arguments
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            m = self.message(time.monotonic() + CONNECT_TIMEOUT)
            if "event" in m:
                self.events.append(m)
            elif "error" in m:
                raise RuntimeError(f"{name}: {m['error'].get('desc', m['error'])}")
            elif "return" in m:
                return m["return"]

    def wait_event(self, name, device, timeout):
        deadline = time.monotonic() + timeout
        while True:
            for e in self.events:
                if e["event"] == name and e.get("data", {}).get("device") == device:
                    return
            self.events = [self.message(deadline)]


def main():
    path, ctl = sys.argv[1], sys.argv[2]
    request = os.path.join(ctl, "unplug")
    while not os.path.exists(request):
        time.sleep(0.05)
    with open(request) as f:
        device = f.read().strip() or "nvme0"
    try:
        qmp = Qmp(path)
        start = time.monotonic()
        qmp.command("device_del", id=device)
        qmp.wait_event("DEVICE_DELETED", device, DELETE_TIMEOUT)
        print(
            f"unplug-agent: {device} deleted {time.monotonic() - start:.1f} s after device_del",
            file=sys.stderr,
        )
        answer(ctl, "ok")
    except Exception as e:  # reported to the guest, which fails its test
        print(f"unplug-agent: {device}: {e}", file=sys.stderr)
        answer(ctl, f"error: {e}")


if __name__ == "__main__":
    main()
