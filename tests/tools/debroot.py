#!/usr/bin/env python
# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Debian roots with a real QEMU and libvirt, made once per machine with debootstrap (tests only).

Debian 12 ships QEMU 7.2 and libvirt 9.0; Debian 13 ships QEMU 10.0 and libvirt 11.3. The
agreement suite runs both on this host from roots under ROOTS (root-owned, not writable by any
other account)::

    python3 tests/tools/debroot.py ensure trixie      # prints the root's path, builds it when missing
    python3 tests/tools/debroot.py qemu trixie        # prints a wrapper that runs the root's QEMU
    python3 tests/tools/debroot.py list
    python3 tests/tools/debroot.py prune              # removes roots of older recipes

A root's directory name carries a hash of what went into it (suite, packages, variant, mirror,
debootstrap's version, this file's layout version), so a change builds a new root beside the
old one. A build runs in a temporary directory on the same filesystem and is renamed into place
only when complete, under a lock, so concurrent runs build a root once and never see half of one.

QEMU from a root runs on this host through the root's own dynamic loader and libraries (no
chroot, any account): see ``qemu_wrapper``.
"""

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time

__all__ = [
    "CACHE",
    "MIRROR",
    "ROOTS",
    "SUITES",
    "RootError",
    "ensure_root",
    "package_version",
    "qemu_wrapper",
    "root_path",
    "upstream_version",
    "wrapper_text",
]

CACHE = os.environ.get("HVM_ROOT_CACHE", "/var/cache/hypervisor-migration")
ROOTS = os.path.join(CACHE, "roots")
WRAPPERS = os.path.join(CACHE, "bin")
MIRROR = "http://deb.debian.org/debian"
# Bumped when the way a root is made changes (post-build steps below).
LAYOUT = 2
COMPLETE = ".hvm-root-complete"

# minbase is essential packages plus apt; debootstrap installs Depends, not Recommends.
# dbus: systemd-container (pulled in by libvirt) fails to configure without it. python3: the
# collection's facts and canary run inside the root's namespace as on a libvirt host.
PACKAGES = ("qemu-system-x86", "libvirt-daemon-system", "libvirt-clients", "dbus", "python3")
SUITES = {
    # Debian 13 splits QEMU's OpenGL and SPICE modules into packages of their own. QEMU loads
    # every module it was built with when asked for its types (libvirt's capability probe does),
    # looking first in QEMU_MODULE_DIR, then in its compiled-in directory: a module missing from
    # the root is then taken from this host's older QEMU, and QEMU 10 aborts on it.
    "trixie": PACKAGES + ("qemu-system-modules-opengl", "qemu-system-modules-spice"),
    "bookworm": PACKAGES,
}
VARIANT = "minbase"
MULTIARCH = "x86_64-linux-gnu"


class RootError(Exception):
    """A root cannot be made or used here."""


def debootstrap_version():
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "debootstrap"], capture_output=True, text=True, check=False).stdout
    except OSError:
        out = ""
    if not out:
        raise RootError("debootstrap is not installed (Debian package debootstrap; ./dev.sh setup installs it)")
    return out


def recipe(suite):
    if suite not in SUITES:
        raise RootError("suite must be one of %s, got %s" % (", ".join(sorted(SUITES)), suite))
    return {
        "suite": suite,
        "packages": sorted(SUITES[suite]),
        "variant": VARIANT,
        "mirror": MIRROR,
        "debootstrap": debootstrap_version(),
        "layout": LAYOUT,
    }


def root_path(suite):
    """Where the root for suite lives (whether or not it is built yet)."""
    digest = hashlib.sha256(json.dumps(recipe(suite), sort_keys=True).encode()).hexdigest()[:12]
    return os.path.join(ROOTS, "%s-%s" % (suite, digest))


def _safe_dir(path):
    """Create path (and parents) root-owned 0755; refuse one another account could change."""
    os.makedirs(path, mode=0o755, exist_ok=True)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != 0 or info.st_mode & 0o022:
        raise RootError("%s must be a directory owned by root and writable by no one else" % path)
    return path


def _safe_tree():
    for path in (CACHE, ROOTS, WRAPPERS):
        _safe_dir(path)


@contextlib.contextmanager
def _locked(path):
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def is_complete(root):
    return os.path.isfile(os.path.join(root, COMPLETE))


def _run_logged(cmd, log, what, env=None):
    log.write("$ %s\n" % " ".join(cmd))
    log.flush()
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, check=False)
    if proc.returncode != 0:
        raise RootError("%s failed with status %d (log: %s)" % (what, proc.returncode, log.name))


def _debootstrap(suite, target, log):
    # debootstrap mounts /proc and /sys into the target while it works: in a private mount
    # namespace those mounts never reach the host, even when it is killed halfway.
    cmd = ["unshare", "--mount", "--propagation", "private", "debootstrap", "--variant=" + VARIANT, suite, target, MIRROR]
    _run_logged(cmd, log, "debootstrap " + suite)


# The packages go in with the root's own apt, not debootstrap's --include: Debian 12's debootstrap
# unpacks trixie's systemd before configuring the libsystemd-shared it pre-depends on and fails.
# /proc is mounted for the maintainer scripts in a private mount namespace (gone when it ends);
# policy-rc.d keeps every service from starting.
_INSTALL = """set -e
mount -t proc proc "$ROOT/proc"
printf '#!/bin/sh\\nexit 101\\n' >"$ROOT/usr/sbin/policy-rc.d"
chmod 755 "$ROOT/usr/sbin/policy-rc.d"
chroot "$ROOT" apt-get -q -o APT::Install-Recommends=false install -y "$@"
chroot "$ROOT" apt-get clean
rm -f "$ROOT/usr/sbin/policy-rc.d"
"""


def _install_packages(suite, target, log):
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C", "ROOT": target}
    cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", _INSTALL, "install"] + sorted(SUITES[suite])
    _run_logged(cmd, log, "installing %s into the %s root" % (" ".join(SUITES[suite]), suite), env)


def _trim(target):
    """Drop what a test never reads: downloaded packages, apt lists, documentation."""
    for sub in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man", "usr/share/locale"):
        path = os.path.join(target, sub)
        if not os.path.isdir(path):
            continue
        for name in os.listdir(path):
            entry = os.path.join(path, name)
            if os.path.isdir(entry) and not os.path.islink(entry):
                shutil.rmtree(entry)
            elif name != "lock":
                os.unlink(entry)


def _build(suite, final):
    tmp = tempfile.mkdtemp(prefix=".build-%s-" % suite, dir=ROOTS)
    log_path = tmp + ".log"
    try:
        with open(log_path, "w") as log:
            _debootstrap(suite, tmp, log)
            _install_packages(suite, tmp, log)
        _trim(tmp)
        # mkdtemp made it 0700: every account must be able to run the root's QEMU
        os.chmod(tmp, 0o755)
        with open(os.path.join(tmp, COMPLETE), "w") as handle:
            json.dump(recipe(suite), handle, sort_keys=True)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.unlink(log_path)


def ensure_root(suite, progress=None):
    """The path of a complete root for suite, built (minutes) when this machine has none yet."""
    if os.geteuid() != 0:
        raise RootError("building and owning Debian roots needs root")
    final = root_path(suite)
    if is_complete(final):
        return final
    _safe_tree()
    with _locked(os.path.join(ROOTS, ".%s.lock" % os.path.basename(final))):
        if is_complete(final):
            return final
        if os.path.lexists(final):  # a build interrupted before this layout's rename: never reuse
            shutil.rmtree(final)
        if progress:
            progress("building the Debian %s root at %s (debootstrap, a few minutes)" % (suite, final))
        _build(suite, final)
    return final


def package_version(root, package):
    """The Debian version of package installed in root ("1:10.0.2+ds-2"), or None."""
    with open(os.path.join(root, "var/lib/dpkg/status")) as handle:
        entries = handle.read().split("\n\n")
    for entry in entries:
        fields = dict(re.findall(r"^([A-Za-z-]+): (.*)$", entry, re.M))
        if fields.get("Package") == package and fields.get("Status", "").endswith(" installed"):
            return fields.get("Version")
    return None


def upstream_version(debian_version):
    """"1:10.0.2+ds-2" -> "10.0.2"."""
    match = re.match(r"(?:\d+:)?(\d+(?:\.\d+)*)", debian_version or "")
    if not match:
        raise RootError("cannot read an upstream version from %r" % debian_version)
    return match.group(1)


def loader_command(root):
    """argv that runs root's QEMU on this host with the root's loader, libraries and data."""
    libs = ":".join(os.path.join(root, d, MULTIARCH) for d in ("usr/lib", "lib"))
    return [
        os.path.join(root, "lib64/ld-linux-x86-64.so.2"),
        "--library-path", libs,
        os.path.join(root, "usr/bin/qemu-system-x86_64"),
        "-L", os.path.join(root, "usr/share/qemu"),
        "-L", os.path.join(root, "usr/share/seabios"),
    ]


def wrapper_text(root, version):
    # QEMU_MODULE_DIR: the root's QEMU would otherwise load the host's (older) modules
    argv = " ".join("'%s'" % arg for arg in loader_command(root))
    return (
        "#!/bin/sh\n"
        "# QEMU %s from the Debian root %s, run through that root's own loader.\n"
        "QEMU_MODULE_DIR='%s'\n"
        "export QEMU_MODULE_DIR\n"
        'exec %s "$@"\n'
    ) % (version, root, os.path.join(root, "usr/lib", MULTIARCH, "qemu"), argv)


def qemu_wrapper(suite, root=None):
    """A root-owned script, named qemu-<major.minor>-system-x86_64, that runs the root's QEMU.

    ``postcopy_facts``/``postcopy_canary`` accept it as ``qemu_binary``: it is a regular file
    no other account can write, its name says x86_64, and ``--version`` prints the root's QEMU
    banner (the script itself carries no banner for the facts' binary scan to find).
    """
    root = root or ensure_root(suite)
    _safe_tree()
    version = upstream_version(package_version(root, "qemu-system-x86"))
    short = ".".join(version.split(".")[:2])
    path = os.path.join(WRAPPERS, "qemu-%s-system-x86_64" % short)
    text = wrapper_text(root, version)
    try:
        with open(path) as handle:
            if handle.read() == text:
                return path
    except OSError:
        pass
    fd, tmp = tempfile.mkstemp(prefix=".qemu-", dir=WRAPPERS)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(tmp, 0o755)
    os.rename(tmp, path)
    return path


def prune():
    """Remove complete roots that no current recipe names; the paths removed."""
    if os.geteuid() != 0:
        raise RootError("removing Debian roots needs root")
    current = {os.path.basename(root_path(suite)) for suite in SUITES}
    removed = []
    for name in sorted(os.listdir(ROOTS)) if os.path.isdir(ROOTS) else ():
        path = os.path.join(ROOTS, name)
        if name in current or not is_complete(path):
            continue
        with _locked(os.path.join(ROOTS, ".%s.lock" % name)):
            shutil.rmtree(path)
        os.unlink(os.path.join(ROOTS, ".%s.lock" % name))
        removed.append(path)
    return removed


def main(argv=None):
    parser = argparse.ArgumentParser(prog="debroot.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("ensure", "print the root's path, building it when missing"),
                       ("qemu", "print the path of a wrapper running the root's QEMU"),
                       ("path", "print where the root lives, built or not")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("suite", choices=sorted(SUITES))
    sub.add_parser("list", help="the roots on this machine")
    sub.add_parser("prune", help="remove the roots no suite's current recipe names (older package lists or layouts)")
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            for name in sorted(os.listdir(ROOTS)) if os.path.isdir(ROOTS) else ():
                path = os.path.join(ROOTS, name)
                if is_complete(path):
                    print(path)
            return 0
        if args.command == "prune":
            for path in prune():
                print("removed %s" % path)
            return 0
        if args.command == "path":
            print(root_path(args.suite))
            return 0
        start = time.monotonic()
        root = ensure_root(args.suite, progress=lambda text: print(text, file=sys.stderr))
        print(qemu_wrapper(args.suite, root) if args.command == "qemu" else root)
        print("(%.1f s)" % (time.monotonic() - start), file=sys.stderr)
    except RootError as exc:
        print("debroot.py: error: %s" % exc, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
