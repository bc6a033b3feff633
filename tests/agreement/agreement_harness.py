# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Set up a condition, ask QEMU, gather our facts, run the canary: all under the same account and filter.

The host knobs go through tests/tools/hostctl.py (always put back); QEMU is asked through
tests/tools/qemu_oracle.py (QMP via the PyPI qemu.qmp package); our facts come from
tests/tools/gather_facts.py in a new process, wrapped exactly like QEMU: seccomp_exec.py
(filter, then account), then the row's wrapper, then the interpreter.
"""

import contextlib
import json
import os
import subprocess
import sys
import threading
from typing import Any, Dict, List, NamedTuple, Optional

import hostctl  # tests/tools, put on sys.path by conftest.py
import qemu_oracle
from agreement_conditions import GUESTS, NO_START, ROOT, WRAPPERS, WRAPPERS_THAT_SWITCH

QEMU = qemu_oracle.DEFAULT_QEMU
TOOLS = os.path.dirname(os.path.abspath(hostctl.__file__))
GATHER = os.path.join(TOOLS, "gather_facts.py")
REPO = os.path.abspath(os.path.join(TOOLS, "..", ".."))
#: the canary's driver (what plugins/modules/postcopy_canary.py runs), and our runner for it
CANARY_DRIVER = os.path.join(REPO, "plugins", "module_utils", "_canary.py")
CANARY_RUN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "canary_run.py")
#: interpreter for processes that run as the test account: root's own may sit in /root (0700)
ACCOUNT_PYTHON = "/usr/bin/python3"
KVM = "/dev/kvm"

#: what this run measured, for the checks that share a measurement and for the report:
#: "measured": {(condition id, accel): Measurement}, "canary": {(condition id, accel): module result}
RESULTS = {"measured": {}, "canary": {}}


class FactsRun(NamedTuple):
    how: str  # "root", "root as <user>" (the module switches), "<user>" (the process is the account)
    supported: bool
    missing: List[str]
    causes: List[Dict[str, Any]]
    backend: str
    facts: Dict[str, Any]


class Measurement(NamedTuple):
    accel: str
    qemu: str  # accepts | refuses | no-start
    qemu_message: Optional[str]
    qemu_version: Optional[str]
    facts: List[FactsRun]


class HarnessError(Exception):
    """A tool could not run (not a verdict)."""


# ------------------------------------------------------------------------------------------------
# where things are


def collections_path():
    """The directory that holds ansible_collections/hypervisor/migration (dev.sh: .build/collections)."""
    candidates = [p for p in sys.path if p] + [os.path.join(REPO, ".build", "collections")]
    for path in candidates:
        if os.path.isdir(os.path.join(path, "ansible_collections", "hypervisor", "migration", "plugins")):
            return os.path.abspath(path)
    return None


def kvm_usable():
    if not os.path.exists(KVM) or not os.access(KVM, os.R_OK | os.W_OK):
        return False
    try:
        fd = os.open(KVM, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


# ------------------------------------------------------------------------------------------------
# host state


@contextlib.contextmanager
def kvm_for_account(gid):
    """/dev/kvm readable and writable by one group (the test account's) inside the block, then put back."""
    info = os.stat(KVM)
    try:
        os.chown(KVM, -1, gid)
        os.chmod(KVM, 0o660)
        yield
    finally:
        os.chown(KVM, -1, info.st_gid)
        os.chmod(KVM, info.st_mode & 0o7777)


@contextlib.contextmanager
def host_state(cond, accel, user):
    """Everything a row needs that is not a knob hostctl.steady watches (huge pages, /dev/kvm)."""
    with contextlib.ExitStack() as stack:
        hugepages = GUESTS[cond.guest][2]
        if hugepages is not None:
            got = stack.enter_context(hostctl.hugepages_set(hugepages))
            if got != hugepages:
                raise HarnessError("asked the kernel for %d huge pages of 2 MiB, got %d" % (hugepages, got))
        if accel == "kvm" and cond.account != ROOT:
            stack.enter_context(kvm_for_account(user.pw_gid))
        yield


class _Watch(object):
    """Polls the knobs while a measurement runs: another run may flip them and put them back in between.

    hostctl.steady compares them once, at the end; a concurrent test that sets the sysctl to 0
    and restores our 1 a moment later would go unnoticed, and QEMU or the probe would have seen 0.
    """

    INTERVAL = 0.002

    def __init__(self, sysctl, mode):
        self.wanted = (sysctl, mode)
        self.moved = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="agreement-knob-watch", daemon=True)

    @staticmethod
    def _now():
        info = os.stat(hostctl.DEVICE)
        return (hostctl.read_sysctl(), info.st_mode & 0o7777), info.st_gid

    def _poll(self):
        group = self._now()[1]
        while not self._stop.is_set():
            knobs, now_group = self._now()
            if knobs != self.wanted or now_group != group:
                self.moved = "sysctl %s, /dev/userfaultfd %04o gid %d" % (knobs[0], knobs[1], now_group)
                return
            self._stop.wait(self.INTERVAL)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        return False


def under(cond, func, attempts=8):
    """func() with the row's sysctl and device mode, taken again whenever a concurrent run touched them meanwhile."""
    def watched():
        with _Watch(cond.sysctl, cond.device) as watch:
            result = func()
        return result, watch.moved

    seen = []
    for _attempt in range(attempts):
        result, moved = hostctl.steady(watched, sysctl=cond.sysctl, mode=cond.device)
        if moved is None:
            return result
        seen.append(moved)
    raise HarnessError("another run kept changing the host under this condition: %s" % "; ".join(seen))


# ------------------------------------------------------------------------------------------------
# commands


def wrapper(cond, user, as_account):
    """The prefix every process of the row runs under: seccomp_exec.py, then the row's wrapper.

    as_account: the process becomes the test account (seccomp_exec.py --user, unless the row's
    wrapper switches itself). Otherwise it stays root (the module then switches in its child).
    """
    command = []
    switch_here = as_account and cond.wrap not in WRAPPERS_THAT_SWITCH
    if cond.deny or cond.ioctls or switch_here:
        command = [sys.executable, hostctl.SECCOMP_EXEC]
        if not (cond.deny or cond.ioctls):
            command.append("--no-filter")
        for spec in cond.deny:
            command += ["--deny", spec]
        for spec in cond.ioctls:
            command += ["--deny-ioctl", spec]
        if switch_here:
            command += ["--user", user.pw_name]
        command.append("--")
    command += [part.format(user=user.pw_name) for part in WRAPPERS[cond.wrap]]
    return command


def identity_in_process(cond, user, as_account):
    """The probe_user that names the account the process already is (no switch)."""
    if not as_account:
        return "root"
    if cond.wrap == "userns":
        return "0"  # root of its own user namespace: uid 0 in there, the test account outside
    return user.pw_name


def facts_plans(cond, user):
    """(how, as_account, probe_user) for every way to gather the row's facts.

    A row of the test account is gathered twice: as the module runs in production (root, the
    probe child switches to probe_user) and as the account itself (Debian's interpreter). A row
    whose wrapper gives the account something a switch from root would lose (ambient caps, a
    user namespace) can only be gathered as the account.
    """
    if cond.account == ROOT:
        return [("root", False, "root")]
    own = (user.pw_name if cond.wrap != "userns" else "%s in a user namespace" % user.pw_name, True, identity_in_process(cond, user, True))
    if cond.wrap in ("ambient-ptrace", "userns"):
        return [own]
    return [("root, probe_user=%s" % user.pw_name, False, user.pw_name), own]


def _env(extra_paths):
    env = dict(os.environ)
    env.pop("PYTHONHOME", None)
    env["PYTHONPATH"] = os.pathsep.join(extra_paths)
    return env


def _run(command, env, timeout, what):
    try:
        proc = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise HarnessError("%s did not finish within %ss: %s" % (what, timeout, " ".join(command))) from None
    return proc


def gather_facts(cond, user, how, as_account, probe_user):
    collections = collections_path()
    if collections is None:
        raise HarnessError("ansible_collections/hypervisor/migration is not on PYTHONPATH (./dev.sh setup makes .build/collections)")
    guest_args, backends, _pages = GUESTS[cond.guest]
    params = {"probe_user": probe_user, "qemu_binary": QEMU, "memory_backends": backends}
    python = ACCOUNT_PYTHON if as_account else sys.executable
    command = wrapper(cond, user, as_account) + [python, GATHER, json.dumps(params)]
    proc = _run(command, _env([collections]), 120, "gather_facts.py")
    if proc.returncode != 0:
        raise HarnessError("gather_facts.py exited %d: %s" % (proc.returncode, proc.stderr.decode("utf-8", "replace").strip()[-2000:]))
    facts = json.loads(proc.stdout.decode())["ansible_facts"]
    details = facts["postcopy"]
    return FactsRun(how, facts["postcopy_supported"], facts["postcopy_missing_features"], details["causes"], details["backend"], facts)


def ask_qemu(cond, user, accel):
    """QEMU's answer under the row's account, filter, wrapper and guest: (accepts|refuses|no-start, message, version)."""
    guest_args, _backends, _pages = GUESTS[cond.guest]
    kwargs = {
        "deny": cond.deny,
        "deny_ioctl": cond.ioctls,
        "qemu_binary": QEMU,
        "accel": accel,
        "prefix": [part.format(user=user.pw_name) for part in WRAPPERS[cond.wrap]],
        "extra_args": list(guest_args),
    }
    if cond.account != ROOT:
        if cond.wrap in WRAPPERS_THAT_SWITCH:
            kwargs["dir_owner"] = user.pw_name
        else:
            kwargs["user"] = user.pw_name
    try:
        verdict = qemu_oracle.ask_qemu(**kwargs)
    except qemu_oracle.OracleError as exc:
        text = str(exc)
        if "before QMP was up" in text:
            # the guest cannot start at all (e.g. its huge pages are not there): not accepted either
            head, _sep, detail = text.partition(": ")
            return NO_START, "%s: %s" % (head, "; ".join(_reasons(detail.split("; ")))), None
        raise HarnessError("QEMU could not be asked: %s" % text) from None
    if verdict.accepted:
        return "accepts", None, verdict.qemu_version
    reasons = _reasons(verdict.stderr)
    return "refuses", verdict.qmp_error + (" (%s)" % "; ".join(reasons) if reasons else ""), verdict.qemu_version


def _reasons(lines):
    """QEMU's stderr without its warnings (KVM warns about CPUID bits the host lacks)."""
    return [line for line in lines if line and not line.startswith("warning:")]


def measure(cond, user, accel):
    """Ask QEMU and gather our facts under the row's full setup; host state always put back."""

    def once():
        qemu, message, version = ask_qemu(cond, user, accel)
        runs = [gather_facts(cond, user, *plan) for plan in facts_plans(cond, user)]
        return Measurement(accel, qemu, message, version, runs)

    with host_state(cond, accel, user):
        return under(cond, once)


# ------------------------------------------------------------------------------------------------
# the canary (module_utils/_canary.py through canary_run.py, in a process of its own)


def canary_plan(cond, user):
    """(as_account, probe_user) for the canary: like production (root, probe_user) unless the wrapper needs the account."""
    if cond.account == ROOT:
        return False, "root"
    if cond.wrap in ("ambient-ptrace", "userns"):
        return True, identity_in_process(cond, user, True)
    return False, user.pw_name


def run_canary(cond, user, accel, timeout=90):
    """The canary's result as the module returns it, run under the row's filter and wrapper (and account)."""
    as_account, probe_user = canary_plan(cond, user)
    python = ACCOUNT_PYTHON if as_account else sys.executable
    params = {"qemu_binary": QEMU, "probe_user": probe_user, "accel": accel, "timeout": 60}
    command = wrapper(cond, user, as_account) + [python, CANARY_RUN, json.dumps(params)]

    def once():
        return _run(command, _env([collections_path()]), timeout, "canary_run.py")

    with host_state(cond, accel, user):
        proc = under(cond, once)
    try:
        return json.loads(proc.stdout.decode())
    except ValueError:
        raise HarnessError(
            "canary_run.py exited %d without JSON: %s %s"
            % (proc.returncode, proc.stdout.decode("utf-8", "replace")[-1000:], proc.stderr.decode("utf-8", "replace")[-2000:])
        ) from None


# ------------------------------------------------------------------------------------------------
# processes left behind


def qemu_descendants(root_pid=None):
    """(pid, cmdline) of every QEMU process below root_pid (default: this process)."""
    root_pid = root_pid or os.getpid()
    parents, names, cmdlines = {}, {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as handle:
                stat = handle.read()
            with open("/proc/%s/cmdline" % entry, "rb") as handle:
                cmdline = handle.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
        except OSError:
            continue
        pid = int(entry)
        names[pid] = stat[stat.index("(") + 1:stat.rindex(")")]
        parents[pid] = int(stat[stat.rindex(")") + 2:].split()[1])
        cmdlines[pid] = cmdline
    found = []
    for pid, name in names.items():
        if not (name.startswith("qemu-system") or "qemu-system" in cmdlines[pid].split(" ")[0]):
            continue
        ancestor, seen = parents.get(pid), set()
        while ancestor and ancestor not in seen:
            if ancestor == root_pid:
                found.append((pid, cmdlines[pid]))
                break
            seen.add(ancestor)
            ancestor = parents.get(ancestor)
    return sorted(found)
