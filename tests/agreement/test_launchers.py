# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Real QEMU 10.0 and real libvirt 11.3 (Debian 13) and libvirt 9.0 with QEMU 7.2 (Debian 12), asked
for post-copy on this host: bare QEMU 10 through its root's loader, and QEMU as libvirt starts it.

The Debian roots are built with debootstrap the first time (a few minutes) and cached under
/var/cache/hypervisor-migration. Every test leaves the host as it found it: no daemon, no QEMU,
no mount, no cgroup, the sysctl and the node's owner and mode.

    PYTHONPATH=.build/collections .venv/bin/pytest tests/agreement/test_launchers.py
"""

import json
import os
import re
import time

import debroot
import hostctl
import libvirt_root
import pytest
import qemu_oracle
import rst_table
from launcher_conditions import DEVICE_VIEWS, LAUNCHER_CONDITIONS, SUITE_VERSIONS
from libvirt_oracle import ask_libvirt, domain_xml
from libvirt_root import LibvirtError, LibvirtRoot

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
GATHER = os.path.join(REPO, "tests", "tools", "gather_facts.py")
COLLECTIONS = os.path.join(REPO, ".build", "collections")
# What the facts must say QEMU would open, for what QEMU was seen to find (DEVICE_VIEWS).
DEVICE_PATH_FOR_VIEW = {"private": "libvirt_private_dev", "host": "host_node", "absent": "none"}
# When QEMU was refused: the cause the facts must put first, and the launcher's cause beside it.
LAUNCHER_CAUSES = {
    "trixie-namespaces-off": ("unprivileged_userfaultfd_sysctl", "device_permissions"),
    "trixie-namespaces-off-seccomp": ("seccomp", None),
    "trixie-acl-without-device": ("unprivileged_userfaultfd_sysctl", "device_not_in_cgroup_acl"),
    "bookworm-defaults": ("unprivileged_userfaultfd_sysctl", None),
    "bookworm-qemu10": ("unprivileged_userfaultfd_sysctl", "libvirt_too_old_for_device"),
}
TABLE = os.path.join(HERE, "..", "..", "docs", "docsite", "rst", "launchers.rst")
# libvirt_root.py's mounts (tmpfs and overlay sources, staging directories) carry this mark;
# all of them live in private mount namespaces, and none may ever show in the host's
MOUNT_MARK = "hvm-libvirt"


@pytest.fixture(scope="session")
def roots():
    """{suite: root}; built once per machine. Needs root (debootstrap, namespaces, mounts)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: builds Debian roots and runs libvirt in its own namespaces")
    try:
        return {suite: debroot.ensure_root(suite) for suite in sorted(debroot.SUITES)}
    except debroot.RootError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def qemu10(roots):
    return debroot.qemu_wrapper("trixie", roots["trixie"])


def _descendants(root_pid):
    parents = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open("/proc/%s/stat" % entry) as handle:
                stat = handle.read()
        except OSError:
            continue
        parents[int(entry)] = int(stat[stat.rindex(")") + 2:].split()[1])
    found = []
    for pid in parents:
        ancestor, seen = parents.get(pid), set()
        while ancestor and ancestor not in seen:
            if ancestor == root_pid:
                found.append(pid)
                break
            seen.add(ancestor)
            ancestor = parents.get(ancestor)
    return found


def _cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "(gone)"


def _our_mounts():
    with open("/proc/self/mountinfo") as handle:
        return [line.strip() for line in handle if MOUNT_MARK in line]


def _node():
    info = os.stat(hostctl.DEVICE)
    return info.st_uid, info.st_gid, info.st_mode & 0o7777


def _settled(read, expected, also=None, seconds=30):
    """read() once it equals expected (or also), else its last value: other runs hold changes briefly."""
    deadline = time.monotonic() + seconds
    value = read()
    while value not in (expected, also) and time.monotonic() < deadline:
        time.sleep(0.2)
        value = read()
    return value


@pytest.fixture(scope="session")
def resting_host():
    """The sysctl and node as the session found them."""
    return hostctl.read_sysctl(), _node()


@pytest.fixture
def host_untouched(resting_host):
    """After the test: no process below pytest, none of our mounts, sysctl and node as before.

    Other test runs on a shared machine change the sysctl and the node's mode for a while: a
    value is as before when it is the one this test started with or the one the session did.
    """
    sysctl, node = hostctl.read_sysctl(), _node()
    yield
    left = _descendants(os.getpid())
    assert left == [], [_cmdline(pid) for pid in left]
    assert _our_mounts() == []
    shared = " (or another test run on this machine holds a change of its own)"
    assert _settled(hostctl.read_sysctl, sysctl, also=resting_host[0]) in (sysctl, resting_host[0]), "sysctl not restored" + shared
    assert _settled(_node, node, also=resting_host[1]) in (node, resting_host[1]), "node not restored" + shared


def _launcher_kwargs(condition, roots, account):
    """(LibvirtRoot keywords, emulator) for a condition; the checkout is bound in so the facts can run there."""
    kwargs = {"qemu_conf": dict(condition.qemu_conf) if condition.qemu_conf else None, "binds": [REPO], "seccomp_deny": condition.deny}
    emulator = None
    if condition.account == "conf":
        kwargs["qemu_conf"] = dict(kwargs["qemu_conf"] or {}, user="+%d" % account.pw_uid, group="+%d" % account.pw_gid)
    elif condition.account == "remap":
        kwargs["qemu_account"] = (account.pw_uid, account.pw_gid)
    if condition.qemu_from:
        emulator, extra = libvirt_root.foreign_qemu(roots[condition.qemu_from])
        kwargs["binds"] += extra.pop("binds")
        kwargs.update(extra)
    return kwargs, emulator


def facts_under(libvirt, emulator):
    """postcopy_facts as it runs on that libvirt's host: the root as /, its python3, its libvirt and QEMU."""
    import json

    params = {"launcher": "auto", "qemu_binary": emulator or "auto"}
    proc = libvirt.run("env", "PYTHONPATH=" + COLLECTIONS, "/usr/bin/python3", GATHER, json.dumps(params))
    return json.loads(proc.stdout)["ansible_facts"]


def check_facts_agree(condition, facts, accepted, sysctl):
    """The facts' verdict is QEMU's, for QEMU's reason, with a remedy that can help under this launcher."""
    launcher = facts["postcopy"]["launcher"]
    assert launcher["kind"] == "libvirt" and launcher["version"].startswith(SUITE_VERSIONS[condition.suite][0] + "."), launcher
    assert launcher["device_path"]["kind"] == DEVICE_PATH_FOR_VIEW[condition.device], launcher["device_path"]
    if launcher["device_path"]["kind"] == "libvirt_private_dev":
        assert launcher["device_path"]["reproduced"] is True, launcher["device_path"]
    assert facts["postcopy_supported"] is accepted, "sysctl %d: %s" % (sysctl, facts["postcopy"]["causes"])
    causes = [cause["cause"] for cause in facts["postcopy"]["causes"]]
    if accepted:
        return
    first, beside = LAUNCHER_CAUSES[condition.id]
    assert causes[0] == first, causes
    if beside:
        assert beside in causes, causes
    remedies = [cause["remedy"] for cause in facts["postcopy"]["causes"]]
    if not launcher["device_path"]["host_grant_helps"]:
        # The host-node grant's remedies start "Give QEMU's account ..." and name postcopy_grant_access=device.
        assert not any(r.startswith("Give QEMU's account") or "postcopy_grant_access=device" in r for r in remedies), remedies


def _expected_ids(condition, roots, account):
    if condition.account:
        return account.pw_uid, account.pw_gid
    # Debian's libvirt runs QEMU as libvirt-qemu:libvirt-qemu (its DAC label)
    uid = libvirt_root.root_account(roots[condition.suite])[0]
    return uid, uid


def _check_device(view, kind, qemu_ids):
    if kind == "absent":
        assert not view.present, view
        return
    rdev = os.stat(hostctl.DEVICE).st_rdev
    assert view.present and view.rdev == "%d:%d" % (os.major(rdev), os.minor(rdev)), view
    owner = qemu_ids if kind == "private" else (0, 0)
    assert (view.uid, view.gid, view.mode) == owner + (0o600,), view


@pytest.mark.parametrize("condition", LAUNCHER_CONDITIONS, ids=lambda c: c.id)
def test_qemu_answer_under_libvirt(condition, roots, agreement_user, host_untouched):
    """QEMU started by the condition's libvirt answers post-copy as measured, at sysctl 0 and 1."""
    kwargs, emulator = _launcher_kwargs(condition, roots, agreement_user)
    libvirt_version = SUITE_VERSIONS[condition.suite][0]
    qemu_version = SUITE_VERSIONS[condition.qemu_from or condition.suite][1]
    ids = _expected_ids(condition, roots, agreement_user)
    with LibvirtRoot(roots[condition.suite], **kwargs) as libvirt:
        for sysctl, expected in zip((0, 1), condition.accepted):
            verdict = hostctl.steady(lambda: ask_libvirt(libvirt, emulator=emulator), sysctl=sysctl, mode=0o600, attempts=8)
            assert verdict.libvirt_version.startswith(libvirt_version + ".")
            assert verdict.qemu_version.startswith(qemu_version + "."), verdict
            assert verdict.qemu_ids == ids
            _check_device(verdict.device, condition.device, ids)
            assert verdict.accepted is expected, "sysctl %d: %s" % (sysctl, verdict.message)
            if not expected:
                # the syscall QEMU falls back to is refused; QEMU 7.2 says so only on its stderr
                assert "Operation not permitted" in verdict.message
            facts = hostctl.steady(lambda: facts_under(libvirt, emulator), sysctl=sysctl, mode=0o600)
            check_facts_agree(condition, facts, verdict.accepted, sysctl)
    assert libvirt.host_changes == []
    assert libvirt.cgroups_left == []


def test_nothing_left_when_the_block_fails(roots, host_untouched):
    """A failure inside the block still destroys the domain, stops libvirt and unmounts."""
    with pytest.raises(RuntimeError, match="inside"):
        with LibvirtRoot(roots["trixie"]) as libvirt:
            name = libvirt.domain_name("left")
            created = libvirt.virsh("create", "/proc/self/fd/0", "--paused", input=domain_xml(name))
            assert created.returncode == 0
            assert libvirt.virsh("list", "--name").stdout.split() == [name]
            assert libvirt.daemon_pid() in _descendants(os.getpid())
            raise RuntimeError("inside")
    assert libvirt.cgroups_left == []


def test_each_root_uses_its_own_daemon_and_account(roots):
    """Debian 12 and 13 both start the monolithic libvirtd; QEMU's account has Debian's fixed uid."""
    for root in roots.values():
        assert libvirt_root.daemon_for(root) == "libvirtd"
        assert libvirt_root.root_account(root)[0] == 64055
        with open(os.path.join(root, "etc/group")) as handle:
            assert "libvirt-qemu:x:64055:libvirt-qemu\n" in handle.read()


def test_facts_run_inside_a_root_as_on_a_libvirt_host(roots, host_untouched):
    """The collection's facts run with the root's python3 where its libvirt and qemu.conf are."""
    repo = os.path.dirname(os.path.dirname(HERE))
    collections = os.path.join(repo, ".build", "collections")
    gather = os.path.join(repo, "tests", "tools", "gather_facts.py")
    with LibvirtRoot(roots["trixie"], binds=[repo]) as libvirt:
        proc = libvirt.run("python3", gather, "{}", env={"PYTHONPATH": collections}, timeout=120)
    facts = json.loads(proc.stdout)["ansible_facts"]
    assert facts["postcopy"]["qemu"]["binary"] == "/usr/bin/qemu-system-x86_64"
    assert facts["postcopy"]["qemu"]["version"].startswith(SUITE_VERSIONS["trixie"][1] + ".")
    assert facts["postcopy_supported"] in (True, False)


def test_qemu_conf_values_that_cannot_be_written_are_refused():
    with pytest.raises(LibvirtError, match=r'^qemu.conf user: a value with a double quote'):
        libvirt_root.qemu_conf_text({"user": 'a"b'})
    assert libvirt_root.qemu_conf_text({"namespaces": [], "seccomp_sandbox": 0, "user": "+5"}).splitlines()[1:] == [
        "namespaces = []", "seccomp_sandbox = 0", 'user = "+5"']


def test_wrapper_reports_qemu10_to_the_modules(qemu10, roots):
    """postcopy_facts and postcopy_canary take the wrapper as qemu_binary: version via --version, x86 by name."""
    from ansible_collections.hypervisor.migration.plugins.module_utils import _canary, _qemu

    expected = debroot.upstream_version(debroot.package_version(roots["trixie"], "qemu-system-x86"))
    assert expected.startswith(SUITE_VERSIONS["trixie"][1] + ".")
    assert _qemu.embedded_version(qemu10) is None  # the script carries no banner: --version answers
    assert _qemu.qemu_version(qemu10) == expected
    assert _qemu.validate_binary(qemu10) == qemu10
    assert _canary._is_x86_qemu(qemu10)
    assert os.stat(os.path.dirname(qemu10)).st_uid == 0 and not os.stat(os.path.dirname(qemu10)).st_mode & 0o022


@pytest.mark.parametrize("sysctl, mode, accepted", [(0, 0o666, True), (0, 0o600, False), (1, 0o600, True)])
def test_bare_qemu10_as_an_account(sysctl, mode, accepted, qemu10, agreement_user, host_untouched):
    """QEMU 10 opens /dev/userfaultfd first and falls back to the syscall: the node's mode decides at sysctl 0."""
    verdict = hostctl.steady(lambda: qemu_oracle.ask_qemu(user=agreement_user.pw_name, qemu_binary=qemu10),
                             sysctl=sysctl, mode=mode, attempts=8)
    assert verdict.qemu_version.startswith(SUITE_VERSIONS["trixie"][1] + ".")
    assert verdict.accepted is accepted, verdict.message
    if not accepted:
        assert verdict.message.endswith("Operation not permitted")


def test_launchers_table_matches_the_conditions():
    """The launchers guide's table has one row per condition, with the answers the tests assert."""
    with open(TABLE) as handle:
        rows = rst_table.rows(handle.read(), first_header="Condition")[1:]
    table = {}
    for cells in rows:
        table[cells[0].strip("`")] = cells
    assert sorted(table) == sorted(c.id for c in LAUNCHER_CONDITIONS)
    words = {True: "accepted", False: "refused"}
    for condition in LAUNCHER_CONDITIONS:
        cells = table[condition.id]
        assert [re.sub(r"\W.*", "", cells[3]), re.sub(r"\W.*", "", cells[4])] == [words[a] for a in condition.accepted], cells
        assert cells[2] == DEVICE_VIEWS[condition.device], cells
