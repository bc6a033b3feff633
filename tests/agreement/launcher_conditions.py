# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The conditions under which QEMU is asked for post-copy as libvirt starts it, and its answers.

Each condition is a Debian root's libvirt (tests/tools/debroot.py, libvirt_root.py) with a
qemu.conf, asked at vm.unprivileged_userfaultfd 0 and 1 with the host's /dev/userfaultfd left
0600 root:root. ``accepted`` and ``device`` are what QEMU answered and what it saw when these
were measured on Debian 12's kernel-6.18 test machines; test_launchers.py asks again on every
run and LAUNCHERS.md tabulates them.
"""

from typing import Dict, NamedTuple, Optional, Tuple

__all__ = ["DEVICE_VIEWS", "LAUNCHER_CONDITIONS", "SUITE_VERSIONS", "LauncherCondition"]

#: (libvirt, QEMU) major.minor of each root
SUITE_VERSIONS = {"trixie": ("11.3", "10.0"), "bookworm": ("9.0", "7.2")}

#: what QEMU finds at /dev/userfaultfd in its own mount namespace
DEVICE_VIEWS = {
    "private": "a node libvirt made in the domain's private /dev, owned by QEMU's account, 0600",
    "host": "the host's own node (no private /dev), root:root 0600",
    "absent": "no node",
}

# cgroup_device_acl as libvirt ships it, minus /dev/userfaultfd
ACL_WITHOUT_DEVICE = ["/dev/null", "/dev/full", "/dev/zero", "/dev/random", "/dev/urandom", "/dev/ptmx", "/dev/kvm"]


class LauncherCondition(NamedTuple):
    id: str
    title: str
    suite: str
    qemu_conf: Optional[Dict[str, object]] = None
    #: another root whose QEMU this root's libvirt starts (<emulator>)
    qemu_from: Optional[str] = None
    #: "conf": qemu.conf user/group name the unprivileged test account; "remap": the root's
    #: libvirt-qemu account takes the test account's uid and gid
    account: Optional[str] = None
    #: QEMU's answer at vm.unprivileged_userfaultfd (0, 1)
    accepted: Tuple[bool, bool] = (True, True)
    device: str = "private"


LAUNCHER_CONDITIONS = (
    LauncherCondition("trixie-defaults", "libvirt 11.3 + QEMU 10.0, qemu.conf untouched", "trixie"),
    LauncherCondition("trixie-seccomp-off", "libvirt 11.3 + QEMU 10.0, seccomp_sandbox = 0", "trixie",
                      qemu_conf={"seccomp_sandbox": 0}),
    LauncherCondition("trixie-other-account", "libvirt 11.3 + QEMU 10.0, user/group = another account", "trixie",
                      account="conf"),
    LauncherCondition("trixie-account-remapped", "libvirt 11.3 + QEMU 10.0, libvirt-qemu with a host account's ids",
                      "trixie", account="remap"),
    LauncherCondition("trixie-namespaces-off", "libvirt 11.3 + QEMU 10.0, namespaces = []", "trixie",
                      qemu_conf={"namespaces": []}, accepted=(False, True), device="host"),
    LauncherCondition("trixie-acl-without-device", "libvirt 11.3 + QEMU 10.0, cgroup_device_acl without /dev/userfaultfd",
                      "trixie", qemu_conf={"cgroup_device_acl": ACL_WITHOUT_DEVICE}, accepted=(False, True), device="absent"),
    LauncherCondition("bookworm-defaults", "libvirt 9.0 + QEMU 7.2, qemu.conf untouched", "bookworm",
                      accepted=(False, True), device="absent"),
    LauncherCondition("bookworm-qemu10", "libvirt 9.0 + QEMU 10.0 (<emulator> from the Debian 13 root)", "bookworm",
                      qemu_from="trixie", accepted=(False, True), device="absent"),
)
