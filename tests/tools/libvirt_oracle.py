#!/usr/bin/env python
# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ask QEMU, as libvirt starts it, whether it accepts post-copy (test oracle).

Through a running ``libvirt_root.LibvirtRoot``: ``virsh create --paused`` a transient domain
(TCG, 64 MiB, no disk, no NIC) whose QEMU waits for an incoming migration (``-incoming defer``
through the ``qemu:commandline`` namespace, as libvirt itself starts a migration's destination),
send it ``migrate-set-capabilities postcopy-ram`` with ``virsh qemu-monitor-command`` and take
QEMU's reply; then ``virsh destroy``. QEMU checks userfaultfd at exactly that point on the
destination, inside libvirt's real confinement: its account, its private /dev, its cgroup
device ACL, its seccomp sandbox.

While the domain runs, the oracle also records what QEMU sees at /dev/userfaultfd in its own
mount namespace (``lstat`` through ``/proc/<qemu>/root``: present, owner, mode, device
number) and the ids QEMU runs as. QEMU before 8.0 replies only "Postcopy is not supported";
its reason is on its stderr, which libvirt's virtlogd keeps in /var/log/libvirt/qemu/<name>.log.

CLI::

    libvirt_oracle.py trixie|bookworm [--set KEY=VALUE]... [--qemu-from trixie] [--json]

exit 0 when QEMU accepts, 1 when it refuses, 2 when it could not be asked.
"""

import argparse
import json
import os
import re
import stat
import sys
import time
from typing import NamedTuple, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import debroot  # noqa: E402
from libvirt_root import LibvirtError, LibvirtRoot, foreign_qemu, settings_from_pairs  # noqa: E402

__all__ = ["DeviceView", "LibvirtVerdict", "ask_libvirt", "domain_xml"]

POSTCOPY_ON = json.dumps({"execute": "migrate-set-capabilities",
                          "arguments": {"capabilities": [{"capability": "postcopy-ram", "state": True}]}})


class DeviceView(NamedTuple):
    """/dev/userfaultfd as the domain's QEMU sees it."""

    present: bool
    uid: Optional[int] = None
    gid: Optional[int] = None
    mode: Optional[int] = None
    #: "10:257"
    rdev: Optional[str] = None


class LibvirtVerdict(NamedTuple):
    """QEMU's answer under libvirt to ``migrate-set-capabilities postcopy-ram: true``."""

    accepted: bool
    #: None when accepted; else QMP's error text, then QEMU's own stderr lines in parentheses
    message: Optional[str]
    qemu_version: str
    libvirt_version: str
    device: DeviceView
    #: (real uid, real gid) of the domain's QEMU
    qemu_ids: Tuple[int, int]
    qmp_error: Optional[str] = None
    stderr: Tuple[str, ...] = ()
    #: seconds from ``virsh create`` to the answer
    seconds: float = 0.0


def domain_xml(name, emulator=None, memory_mib=64):
    """A transient TCG domain waiting for an incoming migration; ACPI on, so that no libvirt
    passes QEMU ``-no-acpi`` (gone in QEMU 9.0, still used by libvirt 9.0)."""
    emulator_element = "<emulator>%s</emulator>" % emulator if emulator else ""
    return """<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>%s</name>
  <memory unit='MiB'>%d</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <features><acpi/></features>
  <devices>%s<memballoon model='none'/></devices>
  <qemu:commandline>
    <qemu:arg value='-incoming'/>
    <qemu:arg value='defer'/>
  </qemu:commandline>
</domain>
""" % (name, memory_mib, emulator_element)


def _monitor(libvirt, name, command):
    proc = libvirt.virsh("qemu-monitor-command", name, command, check=False)
    try:
        return json.loads(proc.stdout)
    except ValueError:
        # virsh reports a QMP error as its own error on stderr with the reply's desc
        return {"error": {"class": "virsh", "desc": (proc.stderr or proc.stdout).strip()}}


def _qemu_pid(libvirt, name):
    with open(libvirt.path("/run/libvirt/qemu/%s.pid" % name)) as handle:
        ns_pid = int(handle.read().strip())
    pid = libvirt.host_pid(ns_pid)
    if pid is None:
        raise LibvirtError("domain %s: QEMU (pid %d inside) not found on the host" % (name, ns_pid))
    return pid


def _device_view(pid):
    try:
        info = os.lstat("/proc/%d/root/dev/userfaultfd" % pid)
    except FileNotFoundError:
        return DeviceView(False)
    return DeviceView(True, info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode),
                      "%d:%d" % (os.major(info.st_rdev), os.minor(info.st_rdev)) if stat.S_ISCHR(info.st_mode) else None)


def _ids(pid):
    with open("/proc/%d/status" % pid) as handle:
        fields = dict(line.split(":", 1) for line in handle if ":" in line)
    return int(fields["Uid"].split()[0]), int(fields["Gid"].split()[0])


_LIBVIRT_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+\+\d{4}: ")
_QEMU_PREFIX = re.compile(r"^(?:\d{4}-\d\d-\d\dT[\d:.]+Z )?(?:\S*qemu-system-x86_64: )?")


def _qemu_stderr(libvirt, name):
    """QEMU's own lines from libvirt's log of the domain: after its command line, minus libvirt's lines."""
    try:
        with open(libvirt.path("/var/log/libvirt/qemu/%s.log" % name), errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return ()
    continued = [i for i, line in enumerate(lines) if line.endswith("\\")]
    after = lines[continued[-1] + 2:] if continued else lines
    return tuple(_QEMU_PREFIX.sub("", line).strip() for line in after if line.strip() and not _LIBVIRT_LINE.match(line))


def ask_libvirt(libvirt, emulator=None, memory_mib=64):
    """Start a paused incoming domain, ask its QEMU for post-copy, destroy it; a LibvirtVerdict."""
    name = libvirt.domain_name("oracle")
    start = time.monotonic()
    created = libvirt.virsh("create", "/proc/self/fd/0", "--paused", input=domain_xml(name, emulator, memory_mib), check=False)
    if created.returncode != 0:
        raise LibvirtError("virsh create failed: %s" % (created.stderr or created.stdout).strip())
    try:
        pid = _qemu_pid(libvirt, name)
        device = _device_view(pid)
        ids = _ids(pid)
        version = _monitor(libvirt, name, json.dumps({"execute": "query-version"}))["return"]["qemu"]
        reply = _monitor(libvirt, name, POSTCOPY_ON)
        seconds = time.monotonic() - start
        lines = _qemu_stderr(libvirt, name)
    finally:
        libvirt.virsh("destroy", name, check=False)
    qemu_version = "%d.%d.%d" % (version["major"], version["minor"], version["micro"])
    if "return" in reply:
        return LibvirtVerdict(True, None, qemu_version, libvirt.libvirt_version, device, ids, None, lines, seconds)
    desc = reply.get("error", {}).get("desc", json.dumps(reply))
    message = "%s (%s)" % (desc, "; ".join(lines)) if lines else desc
    return LibvirtVerdict(False, message, qemu_version, libvirt.libvirt_version, device, ids, desc, lines, seconds)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="libvirt_oracle.py", description=__doc__.splitlines()[0])
    parser.add_argument("suite", choices=sorted(debroot.SUITES))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a qemu.conf setting")
    parser.add_argument("--qemu-from", choices=sorted(debroot.SUITES),
                        help="start that root's QEMU instead of the root's own (libvirt 9.0 with QEMU 10.0: --qemu-from trixie)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        root = debroot.ensure_root(args.suite)
        emulator, extra = foreign_qemu(debroot.ensure_root(args.qemu_from)) if args.qemu_from else (None, {})
        with LibvirtRoot(root, qemu_conf=settings_from_pairs(args.set) if args.set else None, **extra) as libvirt:
            verdict = ask_libvirt(libvirt, emulator=emulator)
    except (LibvirtError, debroot.RootError) as exc:
        print("libvirt_oracle.py: error: %s" % exc, file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(verdict._asdict()))
    else:
        print("libvirt %s, QEMU %s: %s; /dev/userfaultfd in the domain: %s" % (
            verdict.libvirt_version, verdict.qemu_version,
            "accepted" if verdict.accepted else "refused: " + verdict.message, verdict.device))
    return 0 if verdict.accepted else 1


if __name__ == "__main__":
    sys.exit(main())
