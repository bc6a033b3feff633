#!/usr/bin/env python
# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A Debian root's libvirt, run on this host with the root as ``/`` (tests only).

``LibvirtRoot(root, qemu_conf={...})`` is a context manager. On entry it starts, under
``unshare --mount --pid --fork``, a small init that

- makes an overlay of the root (the cached root is the read-only lower layer; every write, from
  qemu.conf to libvirt's state, lands in a tmpfs and vanishes with the namespace),
- mounts a fresh /proc, binds the host's /sys (cgroups) and /dev (the host's devtmpfs, so
  /dev/kvm and /dev/userfaultfd are the host's own nodes), a tmpfs on /run and /tmp,
- ``pivot_root``s into the overlay (a plain chroot makes libvirt fail with "Failed disable
  mount propagation out of the root filesystem": / must be a mount point),
- writes qemu.conf from the given settings, starts virtlogd and the QEMU driver daemon the
  root's libvirt uses (``virtqemud`` where the root enables the modular daemons, else
  ``libvirtd``), and reaps every orphan (QEMU is daemonized by libvirt and ends up below it).

``virsh()`` runs the root's virsh through ``nsenter -t <init> -m -r -w``. On exit every domain
is destroyed, the daemon stopped, the namespace's last process ends (so its mounts and any QEMU
in it are gone), the cgroup directories libvirt made on the host are removed, and host device
nodes whose owner or mode libvirt changed (only possible with ``namespaces = []``) are put back;
``host_changes`` lists what had to be put back.

No SELinux or AppArmor policy is loaded on the machines this runs on, so libvirt's security
driver is its DAC driver (accounts and file ownership) plus none; ``security_driver = "none"``
in qemu.conf changes nothing here but is accepted like any other setting.

CLI for manual use::

    libvirt_root.py trixie [--set KEY=VALUE]... [-- virsh args]   # default: a shell inside
"""

import argparse
import contextlib
import ctypes
import itertools
import json
import os
import re
import select
import signal
import stat
import subprocess
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import debroot  # noqa: E402

__all__ = [
    "HOST_NODES",
    "LibvirtError",
    "LibvirtRoot",
    "foreign_qemu",
    "qemu_conf_text",
    "root_account",
]

HOST_NODES = ("/dev/userfaultfd", "/dev/kvm")
CGROUP_ROOT = "/sys/fs/cgroup"
PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
READY = "hvm-libvirt-root-ready"
MNT_DETACH = 2
SYS_PIVOT_ROOT = 155  # x86_64


class LibvirtError(Exception):
    """libvirt from a root could not be started, asked or stopped."""


# --------------------------------------------------------------------------------------------
# qemu.conf and accounts


def _conf_value(value, key):
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        if '"' in value or "\n" in value:
            raise LibvirtError("qemu.conf %s: a value with a double quote or a newline cannot be written: %r" % (key, value))
        return '"%s"' % value
    if isinstance(value, (list, tuple)):
        return "[%s]" % ", ".join(_conf_value(item, key) for item in value)
    raise LibvirtError("qemu.conf %s: unsupported value %r" % (key, value))


def qemu_conf_text(settings):
    """qemu.conf with exactly these settings (every other one at libvirt's compiled default)."""
    lines = ["# qemu.conf for one test run"]
    for key, value in sorted(settings.items()):
        if not re.match(r"^[a-z_][a-z0-9_]*$", key):
            raise LibvirtError("qemu.conf: %r is not a setting name" % key)
        lines.append("%s = %s" % (key, _conf_value(value, key)))
    return "\n".join(lines) + "\n"


def _passwd_entry(root, database, name):
    with open(os.path.join(root, "etc", database)) as handle:
        for line in handle:
            fields = line.rstrip("\n").split(":")
            if fields[0] == name:
                return fields
    return None


def root_account(root, name="libvirt-qemu"):
    """(uid, gid) of account name in the root's own /etc/passwd, or None."""
    entry = _passwd_entry(root, "passwd", name)
    return (int(entry[2]), int(entry[3])) if entry else None


def _remapped(text, name, number, column):
    out = []
    for line in text.splitlines(True):
        fields = line.split(":")
        if fields[0] == name:
            fields[column] = str(number)
        out.append(":".join(fields))
    return "".join(out)


def daemon_for(root):
    """The QEMU driver daemon the root's packages start: virtqemud when they enable it."""
    wants = os.path.join(root, "etc/systemd/system/sockets.target.wants")
    enabled = set(os.listdir(wants)) if os.path.isdir(wants) else set()
    if "virtqemud.socket" in enabled and os.path.exists(os.path.join(root, "usr/sbin/virtqemud")):
        return "virtqemud"
    if os.path.exists(os.path.join(root, "usr/sbin/libvirtd")):
        return "libvirtd"
    raise LibvirtError("no libvirt QEMU driver daemon in %s" % root)


def foreign_qemu(qemu_root):
    """(emulator, LibvirtRoot keywords) so that a root's libvirt starts qemu_root's QEMU instead.

    qemu_root is bound read-only at its own path, and a wrapper running its QEMU through its own
    loader (as on the host) is written to /usr/local/bin in the overlay: the domain's
    ``<emulator>`` names it. This pairs Debian 12's libvirt 9.0 with Debian 13's QEMU 10.0.
    """
    version = debroot.upstream_version(debroot.package_version(qemu_root, "qemu-system-x86"))
    emulator = "/usr/local/bin/qemu-%s-system-x86_64" % ".".join(version.split(".")[:2])
    return emulator, {"binds": [qemu_root], "files": {emulator: (debroot.wrapper_text(qemu_root, version), 0o755)}}


# --------------------------------------------------------------------------------------------
# host state: what libvirt may leave on the host, snapshotted before and restored after


def _cgroup_dirs():
    found = set()
    for top, dirs, _files in os.walk(CGROUP_ROOT):
        for name in dirs:
            found.add(os.path.join(top, name))
    return found


def _node_state(path):
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    return (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode))


def _remove_new_cgroups(before, tag):
    """rmdir the cgroups libvirt made for this run's domains, and its partition when now empty.

    Other runs on the machine (this suite's or anyone's libvirt) make cgroups at the same time:
    only directories named after this run's domains (their names carry ``tag``) are ours; an
    empty new ``machine`` partition is removed too (the kernel refuses while a cgroup is in use).
    Returns this run's directories that could not be removed.
    """
    left = []
    for path in sorted(_cgroup_dirs() - before, key=lambda p: p.count("/"), reverse=True):
        ours = tag in path
        if not ours and os.path.basename(path) != "machine":
            continue
        try:
            os.rmdir(path)
        except OSError:
            if ours:
                left.append(path)
    return left


def _restore_nodes(saved):
    """Put back nodes libvirt gave to another owner (its DAC driver chowns; it never only chmods).

    Other test runs on the machine change these nodes' mode and group at the same time; a node
    whose owner did not change is theirs to restore.
    """
    changed = []
    for path, state in saved.items():
        now = _node_state(path)
        if state is None or now is None or now[0] == state[0]:
            continue
        changed.append({"path": path, "was": state, "found": now})
        os.chown(path, state[0], state[1])
        os.chmod(path, state[2])
    return changed


# --------------------------------------------------------------------------------------------
# the init inside the namespace


def _sh(*cmd):
    subprocess.run(list(cmd), check=True, stdin=subprocess.DEVNULL)


def _write(path, text, mode=0o644):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        handle.write(text)
    os.chmod(path, mode)


def _build_new_root(spec):
    """Overlay of the root plus the host's /sys and /dev, at spec["staging"]/new; returns it."""
    staging = spec["staging"]
    _sh("mount", "-t", "tmpfs", "-o", "mode=0700", "hvm-libvirt", staging)
    for sub in ("upper", "work", "new"):
        os.mkdir(os.path.join(staging, sub), 0o755)
    new = os.path.join(staging, "new")
    _sh("mount", "-t", "overlay", "hvm-libvirt-root", "-o",
        "lowerdir=%s,upperdir=%s/upper,workdir=%s/work" % (spec["root"], staging, staging), new)
    _sh("mount", "-t", "proc", "proc", new + "/proc")
    _sh("mount", "--rbind", "/sys", new + "/sys")
    _sh("mount", "--rbind", "/dev", new + "/dev")
    _sh("mount", "-t", "tmpfs", "-o", "mode=0755", "hvm-libvirt-run", new + "/run")
    _sh("mount", "-t", "tmpfs", "-o", "mode=1777", "hvm-libvirt-tmp", new + "/tmp")
    for path in spec["binds"]:
        os.makedirs(new + path, exist_ok=True)
        _sh("mount", "--bind", "-o", "ro", path, new + path)
        _sh("mount", "-o", "remount,bind,ro", new + path)
    for path, (text, mode) in spec["files"].items():
        _write(new + path, text, mode)
    account = spec["qemu_account"]
    if account:
        for database, number, column in (("passwd", account[0], 2), ("passwd", account[1], 3), ("group", account[1], 2)):
            path = os.path.join(new, "etc", database)
            with open(path) as handle:
                text = handle.read()
            _write(path, _remapped(text, "libvirt-qemu", number, column))
    return new


def _pivot(new):
    libc = ctypes.CDLL(None, use_errno=True)
    os.chdir(new)
    os.mkdir(".hvm-old-root")
    if libc.syscall(SYS_PIVOT_ROOT, b".", b".hvm-old-root") != 0:
        raise OSError(ctypes.get_errno(), "pivot_root")
    os.chdir("/")
    if libc.umount2(b"/.hvm-old-root", MNT_DETACH) != 0:
        raise OSError(ctypes.get_errno(), "umount /.hvm-old-root")
    os.rmdir("/.hvm-old-root")


def _init(spec_path):
    """pid 1 of the namespace: build the root, start virtlogd and the daemon, reap until it ends."""
    with open(spec_path) as handle:
        spec = json.load(handle)
    new = _build_new_root(spec)
    _pivot(new)
    env = {"PATH": PATH, "LC_ALL": "C", "HOME": "/root"}
    children = {}
    stopping = []

    def forward(signum, _frame):
        stopping.append(signum)
        for pid in list(children):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for name in ("virtlogd", spec["daemon"]):
        children[subprocess.Popen(["/usr/sbin/" + name], env=env, stdin=subprocess.DEVNULL, cwd="/").pid] = name
    print(READY, flush=True)
    status = 0
    while True:
        try:
            pid, code = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        name = children.pop(pid, None)
        if name == spec["daemon"]:
            status = 0 if stopping else (os.waitstatus_to_exitcode(code) or 1)
            forward(signal.SIGTERM, None)  # virtlogd follows
        if not children:
            break
    return status


# --------------------------------------------------------------------------------------------
# the host side


def _children(pid):
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as handle:
            return [int(p) for p in handle.read().split()]
    except OSError:
        return []


def _pid_ns(pid):
    try:
        return os.readlink("/proc/%d/ns/pid" % pid)
    except OSError:
        return None


def _processes_in_ns(ns):
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit() and _pid_ns(int(name)) == ns:
            found.append(int(name))
    return found


def _ns_pid_to_host(ns, ns_pid):
    for pid in _processes_in_ns(ns):
        try:
            with open("/proc/%d/status" % pid) as handle:
                for line in handle:
                    if line.startswith("NSpid:") and int(line.split()[-1]) == ns_pid:
                        return pid
        except OSError:
            continue
    return None


class LibvirtRoot:
    """libvirt from a Debian root, running on this host until the block ends."""

    def __init__(self, root, qemu_conf=None, qemu_account=None, binds=(), files=None, timeout=180):
        """``qemu_conf``: settings for qemu.conf (None: the root's packaged file, all comments).
        ``qemu_account``: (uid, gid) the root's libvirt-qemu account and group get instead of
        theirs, e.g. a host test account's, so a host-side probe can run as the same ids.
        ``binds``: host directories made visible, read-only, at the same path inside.
        ``files``: {path inside: (text, mode)} written into the overlay before libvirt starts.
        """
        if os.geteuid() != 0:
            raise LibvirtError("running libvirt from a root needs root")
        self.root = root
        self.daemon = daemon_for(root)
        self.libvirt_version = debroot.upstream_version(debroot.package_version(root, "libvirt-daemon"))
        self.qemu_version = debroot.upstream_version(debroot.package_version(root, "qemu-system-x86"))
        self.qemu_conf = qemu_conf
        self.qemu_account = tuple(qemu_account) if qemu_account else root_account(root)
        self.binds = tuple(binds)
        self.files = dict(files or {})
        self.timeout = timeout
        self.host_changes = []
        self.cgroups_left = []
        self.tag = uuid.uuid4().hex[:8]
        self._domains = itertools.count(1)
        self._proc = None
        self._init_pid = None
        self._ns = None
        self._staging = None
        self._log = None
        self._cgroups = set()
        self._nodes = {}

    # -- lifecycle

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc):
        self.stop()

    def _spec(self):
        files = dict(self.files)
        if self.qemu_conf is not None:
            files["/etc/libvirt/qemu.conf"] = (qemu_conf_text(self.qemu_conf), 0o600)
        return {
            "root": self.root,
            "staging": self._staging,
            "daemon": self.daemon,
            "binds": list(self.binds),
            "files": files,
            "qemu_account": list(self.qemu_account) if self.qemu_account != root_account(self.root) else None,
        }

    def start(self):
        self._cgroups = _cgroup_dirs()
        self._nodes = {path: _node_state(path) for path in HOST_NODES}
        self._staging = tempfile.mkdtemp(prefix="hvm-libvirt-root-")
        spec_path = os.path.join(self._staging + ".json")
        with open(os.open(spec_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
            json.dump(self._spec(), handle)
        self._log = tempfile.TemporaryFile(prefix="hvm-libvirt-root-log-")
        self._proc = subprocess.Popen(
            # pdeathsig: when this process dies without stop() (a killed test run), unshare is
            # killed, --kill-child kills the init, and the pid namespace ends with everything in it
            ["setpriv", "--pdeathsig", "KILL", "unshare", "--mount", "--propagation", "private", "--pid", "--fork",
             "--kill-child", sys.executable, os.path.abspath(__file__), "_init", spec_path],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._log,
            start_new_session=True, env={"PATH": PATH, "LC_ALL": "C"})
        try:
            ready = select.select([self._proc.stdout], [], [], self.timeout)[0]
            line = self._proc.stdout.readline().decode(errors="replace").strip() if ready else "(no answer in %ss)" % self.timeout
        finally:
            os.unlink(spec_path)
        if line != READY:
            raise LibvirtError("libvirt's namespace did not come up: %s %s" % (line, self.log_text()))
        children = _children(self._proc.pid)
        if len(children) != 1:
            raise LibvirtError("cannot find the namespace's init below unshare (%s)" % children)
        self._init_pid = children[0]
        self._ns = _pid_ns(self._init_pid)
        self._wait_for_daemon()

    def _wait_for_daemon(self):
        deadline = time.monotonic() + self.timeout
        while True:
            proc = self.virsh("version", check=False)
            if proc.returncode == 0:
                return
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise LibvirtError("%s did not answer: %s; %s" % (self.daemon, proc.stderr.strip(), self.log_text()))
            time.sleep(0.1)

    def stop(self):
        """Destroy every domain, stop the daemon, and undo what it did to the host.

        Whatever fails on the way (a virsh that does not answer), the namespace's processes are
        killed: SIGKILL to unshare's process group takes its init, and with it every process of
        the pid namespace, QEMU included.
        """
        try:
            self._stop_gracefully()
        finally:
            self._kill()
            self._wait_ns_empty()
            self.cgroups_left = _remove_new_cgroups(self._cgroups, self.tag) if self._cgroups else []
            self.host_changes = _restore_nodes(self._nodes)
            if self._staging:
                with contextlib.suppress(OSError):
                    os.rmdir(self._staging)
            self._staging = None

    def _stop_gracefully(self):
        if self._proc is None or self._proc.poll() is not None or not self._init_pid:
            return
        # destroyed domains let libvirt remove their cgroups; a daemon that does not answer is killed
        with contextlib.suppress(LibvirtError):
            self._destroy_domains()
        with contextlib.suppress(OSError):
            os.kill(self._init_pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=self.timeout)

    def _kill(self):
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stdout.close()

    def _wait_ns_empty(self):
        """The pid namespace's processes (QEMU included) are killed with its init; wait until gone."""
        if not self._init_pid:
            return
        ns = self._ns
        deadline = time.monotonic() + 10
        while ns and _processes_in_ns(ns) and time.monotonic() < deadline:
            time.sleep(0.05)
        self._init_pid = None

    def _destroy_domains(self):
        listing = self.virsh("list", "--name", check=False)
        for name in listing.stdout.split():
            self.virsh("destroy", name, check=False)

    # -- inside

    def domain_name(self, purpose):
        """A name for a domain of this run: its cgroups are found (and removed) by it."""
        return "hvm-%s-%s-%d" % (purpose, self.tag, next(self._domains))

    @property
    def init_pid(self):
        return self._init_pid

    @property
    def pid_ns(self):
        return _pid_ns(self._init_pid)

    def daemon_pid(self):
        """The daemon's host pid."""
        for pid in _children(self._init_pid):
            try:
                with open("/proc/%d/comm" % pid) as handle:
                    if handle.read().strip() == self.daemon:
                        return pid
            except OSError:
                continue
        return None

    def host_pid(self, ns_pid):
        return _ns_pid_to_host(self.pid_ns, ns_pid)

    def path(self, inside):
        """The host path of a file inside (through /proc/<init>/root)."""
        return "/proc/%d/root%s" % (self._init_pid, inside)

    def run(self, *argv, input=None, check=True, timeout=None, env=None):
        """Run argv inside the root's mount and pid namespaces, with the root as /.

        The root has python3: with the collection in ``binds`` and PYTHONPATH in ``env``, the
        collection's code runs here as on a host where this libvirt is installed.
        """
        if not self._init_pid:
            raise LibvirtError("libvirt is not running")
        cmd = ["nsenter", "-t", str(self._init_pid), "-m", "-p", "-r", "-w"] + list(argv)
        try:
            proc = subprocess.run(cmd, input=input, capture_output=True, text=True, env=dict(env or {}, PATH=PATH, LC_ALL="C"),
                                  timeout=timeout or self.timeout, check=False)
        except subprocess.TimeoutExpired:
            raise LibvirtError("%s did not finish within %ss" % (" ".join(argv), timeout or self.timeout)) from None
        if check and proc.returncode != 0:
            raise LibvirtError("%s failed: %s" % (" ".join(argv), (proc.stderr or proc.stdout).strip()))
        return proc

    def virsh(self, *args, input=None, check=True, timeout=None):
        return self.run("virsh", "-q", "-c", "qemu:///system", *args, input=input, check=check, timeout=timeout)

    def log_text(self):
        if self._log is None:
            return ""
        self._log.flush()
        self._log.seek(0)
        text = self._log.read().decode(errors="replace").strip()
        self._log.seek(0, os.SEEK_END)
        return text[-2000:]


def settings_from_pairs(pairs):
    """qemu.conf settings from KEY=VALUE strings (JSON for lists and numbers)."""
    settings = {}
    for pair in pairs:
        key, value = pair.split("=", 1) if "=" in pair else (pair, "")
        settings[key] = json.loads(value) if value[:1] in "[0123456789" else value
    return settings


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_init"]:
        return _init(argv[1])
    parser = argparse.ArgumentParser(prog="libvirt_root.py", description="run a Debian root's libvirt on this host")
    parser.add_argument("suite", choices=sorted(debroot.SUITES))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a qemu.conf setting (JSON for lists and numbers): --set 'namespaces=[]'")
    parser.add_argument("command", nargs="*", help="virsh arguments (default: an interactive shell inside)")
    args = parser.parse_args(argv)
    try:
        root = debroot.ensure_root(args.suite)
        with LibvirtRoot(root, qemu_conf=settings_from_pairs(args.set) if args.set else None) as libvirt:
            about = (libvirt.daemon, args.suite, libvirt.libvirt_version, libvirt.qemu_version, libvirt.init_pid)
            print("%s %s (libvirt %s, QEMU %s), init pid %d" % about, file=sys.stderr)
            if args.command:
                proc = libvirt.virsh(*args.command, check=False)
                sys.stdout.write(proc.stdout)
                sys.stderr.write(proc.stderr)
            else:
                subprocess.run(["nsenter", "-t", str(libvirt.init_pid), "-m", "-p", "-r", "-w", "/bin/bash"], check=False)
        if libvirt.host_changes or libvirt.cgroups_left:
            print("put back: %s; cgroups left: %s" % (libvirt.host_changes, libvirt.cgroups_left), file=sys.stderr)
    except (LibvirtError, debroot.RootError) as exc:
        print("libvirt_root.py: error: %s" % exc, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
