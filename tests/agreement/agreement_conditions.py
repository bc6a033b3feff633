# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The conditions of the QEMU-agreement suite: one table, one row per way post-copy can break (or not).

Each row is set up for real on this host (vm.unprivileged_userfaultfd, the mode of
/dev/userfaultfd, a seccomp filter, a wrapper command, QEMU's guest RAM), then QEMU is
asked (an ``-incoming defer`` QEMU, ``migrate-set-capabilities postcopy-ram on``) and our
facts are gathered under exactly the same account, filter and wrapper. The suite asserts
``postcopy_supported == QEMU accepted`` for every row, under every accelerator in ``accels``.

Columns of TABLE ("-" is empty):

- ``acct``: ``root``, or ``user``: the unprivileged test account (tests/tools/hostctl.TEST_USER).
- ``sysctl``: vm.unprivileged_userfaultfd during the row.
- ``dev``: the mode of /dev/userfaultfd during the row (QEMU 7.2 never opens it; 8.0+ does).
- ``deny``: seccomp_exec.py ``--deny`` specs (syscall:errno) for both QEMU and the probe.
- ``ioctls``: seccomp_exec.py ``--deny-ioctl`` specs (request:errno), requests named as in IOCTLS.
- ``wrap``: a named wrapper put right before QEMU and the probe's interpreter (see WRAPPERS).
- ``guest``: how QEMU's guest RAM is backed, and which ``memory_backends`` the facts judge (see GUESTS).
- ``qemu``: what QEMU 7.2 answered when this table was written (``accepts``, ``refuses``, or
  ``no-start`` when the guest cannot even start). The suite checks it, so a row that stops
  reproducing its condition fails loudly instead of agreeing vacuously.
- ``facts``: the first missing feature and its cause that the facts must report when not
  supported, as ``feature/cause`` (checked by test_cause_is_named).

FINDINGS names the rows where our verdict (or only our cause) does NOT agree with QEMU today:
that check is an expected failure carrying the explanation, and fails the day it agrees (so
the table gets updated). ACCELS limits a row to one accelerator; all others run under both.
"""

from typing import NamedTuple, Tuple

ROOT = "root"
USER = "user"

ACCEPTS = "accepts"
REFUSES = "refuses"
NO_START = "no-start"

#: named wrappers, put after seccomp_exec.py and right before QEMU or the interpreter; "{user}" is the test account
WRAPPERS = {
    "": (),
    # root without CAP_SYS_PTRACE (dropped from the bounding set: gone after exec)
    "no-ptrace": ("setpriv", "--bounding-set", "-sys_ptrace", "--"),
    # the test account holding CAP_SYS_PTRACE as an ambient capability (a systemd AmbientCapabilities= unit)
    "ambient-ptrace": ("setpriv", "--reuid={user}", "--regid={user}", "--init-groups", "--inh-caps=+sys_ptrace", "--ambient-caps=+sys_ptrace", "--"),
    # the test account as root of its own user namespace (a rootless container)
    "userns": ("unshare", "--user", "--map-root-user", "--"),
    # an open-file limit just below what QEMU 7.2 needs for its check (13 under TCG, 16 under KVM; the probe works from 9)
    "nofile-12": ("prlimit", "--nofile=12", "--"),
    "nofile-15": ("prlimit", "--nofile=15", "--"),
}
#: wrappers that become the test account themselves (seccomp_exec.py then only filters)
WRAPPERS_THAT_SWITCH = ("ambient-ptrace",)

#: guest RAM: (QEMU arguments, the facts' memory_backends, huge pages of 2 MiB to reserve or None)
GUESTS = {
    "anonymous": ((), ["anonymous"], None),
    "memfd": (("-object", "memory-backend-memfd,id=ram0,size=64M,share=on", "-machine", "memory-backend=ram0"), ["anonymous", "shmem"], None),
    "hugepages": (
        ("-object", "memory-backend-memfd,id=ram0,size=64M,hugetlb=on,hugetlbsize=2M,share=on", "-machine", "memory-backend=ram0"),
        ["anonymous", "hugetlbfs"],
        40,
    ),
    "huge-none": (
        ("-object", "memory-backend-memfd,id=ram0,size=64M,hugetlb=on,hugetlbsize=2M,share=on", "-machine", "memory-backend=ram0"),
        ["anonymous", "hugetlbfs"],
        0,
    ),
    # QEMU's own seccomp sandbox, as libvirt starts it (the probe cannot run inside it; the canary does)
    "sandbox": (("-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"), ["anonymous"], None),
}


class Condition(NamedTuple):
    id: str
    account: str
    sysctl: int
    device: int
    deny: Tuple[str, ...]
    ioctls: Tuple[str, ...]
    wrap: str
    guest: str
    qemu: str
    facts: str
    finding: str = ""
    finding_in: str = ""  # "verdict" or "cause"
    accels: Tuple[str, ...] = ("tcg", "kvm")

    @property
    def runs_as_account(self):
        """True when QEMU and the probe run as the test account (through seccomp_exec.py or the wrapper)."""
        return self.account == USER


IOCTLS = {
    # UFFDIO_* request numbers on x86_64 (include/uapi/linux/userfaultfd.h), by the names the table uses
    "API": "0xC018AA3F",
    "REGISTER": "0xC020AA00",
    "UNREGISTER": "0x8010AA01",
    "IOC_NEW": "0x0000AA00",  # USERFAULTFD_IOC_NEW on /dev/userfaultfd (QEMU 8.0+)
}

NOFILE_FINDING = (
    "QEMU 7.2 already holds 11 (TCG) or 14 (KVM) file descriptors when it checks, the probe far fewer: just below "
    "QEMU's need its userfaultfd() fails with EMFILE while the probe's succeeds (only QEMU's own fd count can tell)"
)
# One row per condition; "-" is empty. deny/ioctls may list several specs separated by commas.
TABLE = """
id                       acct sysctl dev  deny               ioctls            wrap           guest     qemu     facts (missing/cause)
root                     root 0      0600 -                  -                 -              anonymous accepts  -
user-sysctl0             user 0      0600 -                  -                 -              anonymous refuses  userfaultfd/unprivileged_userfaultfd_sysctl
user-sysctl1             user 1      0600 -                  -                 -              anonymous accepts  -
user-dev0666-sysctl0     user 0      0666 -                  -                 -              anonymous refuses  userfaultfd/unprivileged_userfaultfd_sysctl
user-dev0666-sysctl1     user 1      0666 -                  -                 -              anonymous accepts  -
user-dev-ioctl-denied    user 1      0666 -                  IOC_NEW:EPERM     -              anonymous accepts  -
root-uffd-ENOSYS         root 0      0600 userfaultfd:ENOSYS -                 -              anonymous refuses  userfaultfd/seccomp
root-uffd-EPERM          root 0      0600 userfaultfd:EPERM  -                 -              anonymous refuses  userfaultfd/seccomp
root-uffd-EACCES         root 0      0600 userfaultfd:EACCES -                 -              anonymous refuses  userfaultfd/lsm
root-uffd-EMFILE         root 0      0600 userfaultfd:EMFILE -                 -              anonymous refuses  userfaultfd/resource_limit
root-uffd-ENOMEM         root 0      0600 userfaultfd:ENOMEM -                 -              anonymous refuses  userfaultfd/resource_limit
user-sysctl1-uffd-EPERM  user 1      0600 userfaultfd:EPERM  -                 -              anonymous refuses  userfaultfd/seccomp
user-sysctl0-uffd-ENOSYS user 0      0600 userfaultfd:ENOSYS -                 -              anonymous refuses  userfaultfd/seccomp
root-api-EINVAL          root 0      0600 -                  API:EINVAL        -              anonymous refuses  uffdio_api/kernel_config
root-api-ENOMEM          root 0      0600 -                  API:ENOMEM        -              anonymous refuses  uffdio_api/resource_limit
root-api-EPERM           root 0      0600 -                  API:EPERM         -              anonymous refuses  uffdio_api/seccomp
root-register-EINVAL     root 0      0600 -                  REGISTER:EINVAL   -              anonymous refuses  uffdio_register/kernel_config
root-register-EPERM      root 0      0600 -                  REGISTER:EPERM    -              anonymous refuses  uffdio_register/seccomp
root-unregister-EINVAL   root 0      0600 -                  UNREGISTER:EINVAL -              anonymous refuses  uffdio_unregister/kernel_config
root-munlockall-EPERM    root 0      0600 munlockall:EPERM   -                 -              anonymous refuses  munlockall/seccomp
root-no-ptrace-sysctl0   root 0      0600 -                  -                 no-ptrace      anonymous refuses  userfaultfd/unprivileged_userfaultfd_sysctl
root-no-ptrace-sysctl1   root 1      0600 -                  -                 no-ptrace      anonymous accepts  -
user-ptrace-sysctl0      user 0      0600 -                  -                 ambient-ptrace anonymous accepts  -
user-userns-sysctl0      user 0      0600 -                  -                 userns         anonymous refuses  userfaultfd/unprivileged_userfaultfd_sysctl
user-userns-sysctl1      user 1      0600 -                  -                 userns         anonymous accepts  -
root-nofile12            root 0      0600 -                  -                 nofile-12      anonymous refuses  -
root-nofile15            root 0      0600 -                  -                 nofile-15      anonymous refuses  -
root-memfd               root 0      0600 -                  -                 -              memfd     accepts  -
user-sysctl1-memfd       user 1      0600 -                  -                 -              memfd     accepts  -
root-hugepages           root 0      0600 -                  -                 -              hugepages accepts  -
root-huge-none           root 0      0600 -                  -                 -              huge-none no-start hugepages_reserved/resource_limit
user-sysctl1-hugepages   user 1      0600 -                  -                 -              hugepages accepts  -
root-qemu-sandbox        root 0      0600 -                  -                 -              sandbox   accepts  -
"""

#: rows where we do not agree with QEMU today, and in what: the verdict, or only the cause
FINDINGS = {
    "root-nofile12": ("verdict", NOFILE_FINDING),
    "root-nofile15": ("verdict", NOFILE_FINDING),
}

#: rows that only make sense under one accelerator (every other row runs under both)
ACCELS = {
    "root-nofile12": ("tcg",),  # under TCG QEMU needs RLIMIT_NOFILE >= 13 for its check (under KVM 12 does not start)
    "root-nofile15": ("kvm",),  # under KVM it needs >= 16 (under TCG 15 is plenty)
}


def _specs(cell, names=None):
    if cell == "-":
        return ()
    specs = []
    for spec in cell.split(","):
        name, sep, err = spec.partition(":")
        specs.append((names[name] if names else name) + sep + err)
    return tuple(specs)


def parse_table(text=TABLE):
    rows = []
    for line in text.strip().splitlines()[1:]:
        ident, acct, sysctl, dev, deny, ioctls, wrap, guest, qemu, facts = line.split()
        assert acct in (ROOT, USER) and (wrap == "-" or wrap in WRAPPERS) and guest in GUESTS and qemu in (ACCEPTS, REFUSES, NO_START), line
        rows.append(
            Condition(
                ident, acct, int(sysctl), int(dev, 8), _specs(deny), _specs(ioctls, IOCTLS),
                "" if wrap == "-" else wrap, guest, qemu, "" if facts == "-" else facts,
                FINDINGS.get(ident, ("", ""))[1], FINDINGS.get(ident, ("", ""))[0], ACCELS.get(ident, ("tcg", "kvm")),
            )
        )
    return rows


CONDITIONS = parse_table()
assert len(set(c.id for c in CONDITIONS)) == len(CONDITIONS)
assert set(FINDINGS) | set(ACCELS) <= set(c.id for c in CONDITIONS)


WRAPPER_WORDS = {
    "no-ptrace": "without CAP_SYS_PTRACE (setpriv --bounding-set -sys_ptrace)",
    "ambient-ptrace": "with ambient CAP_SYS_PTRACE (setpriv --ambient-caps +sys_ptrace)",
    "userns": "as root of its own user namespace (unshare --user --map-root-user)",
    "nofile-12": "RLIMIT_NOFILE 12 (prlimit)",
    "nofile-15": "RLIMIT_NOFILE 15 (prlimit)",
}
GUEST_WORDS = {
    "memfd": "guest RAM memory-backend-memfd share=on, memory_backends [anonymous, shmem]",
    "hugepages": "guest RAM on 2 MiB huge pages (memfd hugetlb=on, 40 reserved), memory_backends [anonymous, hugetlbfs]",
    "huge-none": "guest RAM on 2 MiB huge pages, none reserved, memory_backends [anonymous, hugetlbfs]",
    "sandbox": "QEMU -sandbox on (libvirt's default options)",
}
assert set(WRAPPER_WORDS) == set(WRAPPERS) - {""} and set(GUEST_WORDS) == set(GUESTS) - {"anonymous"}


def describe(cond):
    """The row's setup in words, for the report."""
    who = {ROOT: "root", USER: "test account"}[cond.account]
    parts = [who, "sysctl %d" % cond.sysctl]
    if cond.device != 0o600:
        parts.append("/dev/userfaultfd %04o" % cond.device)
    parts += ["seccomp %s" % spec for spec in cond.deny]
    names = dict((number, name) for name, number in IOCTLS.items())
    for spec in cond.ioctls:
        number, _sep, err = spec.partition(":")
        name = names.get(number, number)
        parts.append("ioctl %s:%s" % ("USERFAULTFD_IOC_NEW" if name == "IOC_NEW" else "UFFDIO_" + name, err))
    if cond.wrap:
        parts.append(WRAPPER_WORDS[cond.wrap])
    if cond.guest != "anonymous":
        parts.append(GUEST_WORDS[cond.guest])
    if tuple(cond.accels) != ("tcg", "kvm"):
        parts.append("%s only" % "/".join(a.upper() for a in cond.accels))
    return ", ".join(parts)
