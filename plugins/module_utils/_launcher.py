# -*- coding: utf-8 -*-
# Copyright: hypervisor.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Who starts QEMU on this host, and what that decides about how QEMU gets userfaultfd.

Hypervisors rarely start QEMU by hand: libvirt does, and libvirt decides what QEMU can reach.
Since 10.1 it makes ``/dev/userfaultfd`` in each domain's private ``/dev`` (its ``mount``
namespace), owned by QEMU's account, and lists it in the default ``cgroup_device_acl``; QEMU 8.0
and newer open that node before falling back to the ``userfaultfd()`` syscall. So the same host,
the same sysctl and the same host node give a different answer for a domain started by libvirt
than for a bare QEMU.

``launcher_facts()`` reads what decides it (libvirt's version, ``/etc/libvirt/qemu.conf`` with
libvirt's own grammar) and says which way QEMU would open userfaultfd:

- ``libvirt_private_dev``: a node libvirt makes for the domain, owned by QEMU's account;
- ``host_node``: the host's ``/dev/userfaultfd`` with its own mode and owner (a bare QEMU, or
  libvirt with namespaces off);
- ``none``: no node QEMU may open; it falls back to the syscall (QEMU before 8.0, no node on the
  host, libvirt before 10.1 with namespaces on, or a ``cgroup_device_acl`` without the node).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import re

from ansible_collections.hypervisor.migration.plugins.module_utils._accounts import is_digits
from ansible_collections.hypervisor.migration.plugins.module_utils._qemu import version_output
from ansible_collections.hypervisor.migration.plugins.module_utils._trust import UntrustedPath, check_chain

__all__ = [
    "DEVICE_PATHS",
    "LAUNCHERS",
    "LAUNCHER_CHOICES",
    "LIBVIRT_DAEMONS",
    "LIBVIRT_SETTINGS",
    "PRIVATE_DEV_MIN_LIBVIRT",
    "QEMU_CONF",
    "choose_device_path",
    "choose_launcher",
    "default_device_acl",
    "describe_launcher",
    "enforcing_lsms",
    "launcher_facts",
    "libvirt_daemon",
    "libvirt_version",
    "library_version",
    "not_reproduced",
    "read_libvirt_settings",
]

LAUNCHERS = ("libvirt", "qemu")
LAUNCHER_CHOICES = ("auto",) + LAUNCHERS
DEVICE_PATHS = ("libvirt_private_dev", "host_node", "none")

# The QEMU driver's daemon: modular (virtqemud) or monolithic (libvirtd); either means libvirt starts QEMU.
LIBVIRT_DAEMONS = ("/usr/sbin/virtqemud", "/usr/sbin/libvirtd")
# libvirt 10.1.0 NEWS: "qemu: Add support for /dev/userfaultfd".
PRIVATE_DEV_MIN_LIBVIRT = (10, 1)
DEVICE_NODE = "/dev/userfaultfd"
QEMU_CONF = "/etc/libvirt/qemu.conf"

# The qemu.conf settings that decide what QEMU can reach, with libvirt's compiled defaults on Linux.
# user and group default to the distribution's QEMU account (resolved in _accounts).
LIBVIRT_SETTINGS = ("user", "group", "namespaces", "cgroup_device_acl", "dynamic_ownership", "security_driver", "seccomp_sandbox")
_COMPILED_DEFAULTS = {
    "user": None,
    "group": None,
    "namespaces": ["mount"],
    "cgroup_device_acl": None,  # depends on the version: default_device_acl()
    "dynamic_ownership": True,
    "security_driver": None,  # the first of selinux, apparmor that the host enables, else none
    "seccomp_sandbox": 1,
}
_DEFAULT_ACL = ["/dev/null", "/dev/full", "/dev/zero", "/dev/random", "/dev/urandom", "/dev/ptmx", "/dev/kvm"]
_VERSION = r"\b(\d+)\.(\d+)\.(\d+)\b"
_VERSION_TIMEOUT = 5
LIBRARY_DIRS = ("/usr/lib64", "/usr/lib/%s-linux-gnu" % os.uname().machine, "/usr/lib")
_LIBRARY_PREFIX = "libvirt.so.0."


def default_device_acl(version):
    """libvirt's compiled cgroup_device_acl: /dev/userfaultfd joined it in 10.1."""
    if version is None or version[:2] >= PRIVATE_DEV_MIN_LIBVIRT:
        return _DEFAULT_ACL + [DEVICE_NODE]
    return list(_DEFAULT_ACL)


def libvirt_daemon(daemons=LIBVIRT_DAEMONS):
    """The installed QEMU driver daemon of libvirt, or None."""
    for path in daemons:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def library_version(lib_dirs=LIBRARY_DIRS):
    """(major, minor, micro) from the name of the libvirt library the daemon links, without running anything.

    libvirt names its library libvirt.so.0.<major * 1000 + minor>.<micro> (libvirt.so.0.11003.0 is
    11.3.0) on every distribution; reading one symlink costs microseconds, ``--version`` ~30 ms.
    """
    for directory in lib_dirs:
        try:
            name = os.path.basename(os.path.realpath(os.path.join(directory, "libvirt.so.0")))
        except OSError:
            continue
        numbers = name[len(_LIBRARY_PREFIX):].split(".") if name.startswith(_LIBRARY_PREFIX) else ()
        if len(numbers) == 2 and all(is_digits(n) for n in numbers):
            number, micro = int(numbers[0]), int(numbers[1])
            return number // 1000, number % 1000, micro
    return None


def libvirt_version(daemon, timeout=_VERSION_TIMEOUT):
    """(major, minor, micro) of the installed libvirt: its library's name, else ``daemon --version``.

    None when it cannot tell, or when the daemon would have to run and is not root's alone.
    """
    found = library_version()
    if found:
        return found
    try:
        real = check_chain(os.path.realpath(daemon))
    except UntrustedPath:
        return None
    match = re.search(_VERSION, version_output(real, timeout))
    return tuple(int(part) for part in match.groups()) if match else None


def _setting_value(conf, name):
    if name in ("user", "group", "security_driver"):
        return conf.string(name)
    if name in ("namespaces", "cgroup_device_acl"):
        return conf.string_list(name)
    if name == "dynamic_ownership":
        return conf.boolean(name)
    return conf.number(name)


def _compiled_defaults(version):
    return {name: {"value": _default(name, version), "source": "compiled default"} for name in LIBVIRT_SETTINGS}


def _default(name, version):
    return default_device_acl(version) if name == "cgroup_device_acl" else _COMPILED_DEFAULTS[name]


def read_libvirt_settings(version, path=QEMU_CONF):
    """({name: {value, source}}, errors, config state) for LIBVIRT_SETTINGS; errors are one line each."""
    if not os.path.lexists(path):
        # Most hosts without libvirt: its compiled defaults, without loading the parser (~5 ms to compile).
        return _compiled_defaults(version), [], "absent"
    from ansible_collections.hypervisor.migration.plugins.module_utils._virtconf import ConfError, load_conf

    conf = load_conf(path)
    settings, errors = {}, list(conf.errors)
    for name in LIBVIRT_SETTINGS:
        try:
            value = _setting_value(conf, name)
        except ConfError as exc:
            if str(exc) not in errors:
                errors.append(str(exc))
            settings[name] = {"value": None, "source": "unreadable", "error": str(exc)}
            continue
        if value is None:
            settings[name] = {"value": _default(name, version), "source": "compiled default"}
        else:
            settings[name] = {"value": value, "source": "%s line %d" % (path, conf.settings[name].line)}
    state = "absent" if conf.absent else ("refused" if conf.errors and not conf.settings else "read")
    return settings, errors, state


def _version_text(version):
    return ".".join(str(part) for part in version) if version else "unknown"


def _path(kind, reason, blocked_by=None):
    """One answer of choose_device_path: blocked_by is the cause id when a node QEMU would open is kept from it."""
    return {"kind": kind, "reason": reason, "blocked_by": blocked_by, "host_grant_helps": kind == "host_node", "libvirt_grants": kind == "libvirt_private_dev"}


def choose_device_path(kind, version, settings, node_present, qemu_uses_device):
    """How QEMU started by this launcher would open userfaultfd: {kind, reason, blocked_by, host_grant_helps, libvirt_grants}."""
    if not qemu_uses_device:
        return _path("none", "QEMU before 8.0 never opens /dev/userfaultfd; it uses the userfaultfd() syscall")
    if not node_present:
        return _path("none", "the host has no /dev/userfaultfd (kernel 6.1 or newer has it); QEMU falls back to the syscall")
    if kind == "qemu":
        return _path("host_node", "a bare QEMU opens the host's /dev/userfaultfd with its mode and owner")
    acl = settings["cgroup_device_acl"]
    namespaces = settings["namespaces"]["value"]
    private_dev = namespaces is None or "mount" in namespaces
    too_old = version is not None and version[:2] < PRIVATE_DEV_MIN_LIBVIRT
    if private_dev and too_old:
        reason = "libvirt %s does not put /dev/userfaultfd in the domain's private /dev (10.1 and newer do); QEMU falls back to the syscall" % (
            _version_text(version)
        )
        return _path("none", reason, "libvirt_too_old_for_device")
    if acl["value"] is not None and DEVICE_NODE not in acl["value"]:
        reason = "cgroup_device_acl (%s) does not list /dev/userfaultfd, so the domain's cgroup denies it; QEMU falls back to the syscall" % acl["source"]
        # libvirt's own list gained the node in 10.1: before that, upgrading is the fix as much as the setting.
        return _path("none", reason, "libvirt_too_old_for_device" if acl["source"] == "compiled default" else "device_not_in_cgroup_acl")
    if private_dev:
        return _path("libvirt_private_dev", "libvirt %s makes /dev/userfaultfd in the domain's private /dev, owned by QEMU's account" % _version_text(version))
    return _path("host_node", "namespaces is empty (%s): QEMU opens the host's /dev/userfaultfd with its mode and owner" % settings["namespaces"]["source"])


def _read_word(path):
    try:
        with open(path) as handle:
            return handle.read(16).strip()
    except (IOError, OSError):
        return None


def enforcing_lsms():
    """The label-based LSMs the host enforces: what libvirt's security_driver would confine QEMU with."""
    found = []
    if _read_word("/sys/fs/selinux/enforce") == "1":
        found.append("selinux")
    if _read_word("/sys/module/apparmor/parameters/enabled") == "Y":
        found.append("apparmor")
    return found


def not_reproduced(kind, settings, lsms):
    """Confinement the probe cannot take on: named, never counted as passed."""
    if kind != "libvirt" or settings["security_driver"]["value"] == "none":
        return []
    driver = settings["security_driver"]
    wanted = [driver["value"]] if driver["value"] else lsms
    return [
        "QEMU's %s label (security_driver from %s): the probe runs under the module's label; the libvirt canary runs under QEMU's" % (lsm, driver["source"])
        for lsm in wanted
        if lsm in lsms
    ]


_DEVICE_PATH_WORDS = {
    "libvirt_private_dev": "device via libvirt's private /dev",
    "host_node": "device via the host's /dev/userfaultfd",
    "none": "no device, syscall only",
}


def describe_launcher(launcher, qemu_version):
    """One phrase for a report line: "libvirt 11.3, QEMU 10.0, device via libvirt's private /dev"."""
    qemu = "QEMU %s" % ".".join((qemu_version or "").split(".")[:2]) if qemu_version else "QEMU (version unknown)"
    if launcher.get("kind") == "libvirt":
        version = ".".join((launcher.get("version") or "").split(".")[:2]) or "(version unknown)"
        words = ["libvirt %s" % version, qemu]
    else:
        words = ["bare %s" % qemu]
    words.append(_DEVICE_PATH_WORDS.get(launcher.get("device_path", {}).get("kind"), "device path unknown"))
    return ", ".join(words)


def choose_launcher(spec, daemon):
    if spec in LAUNCHERS:
        return spec
    return "libvirt" if daemon else "qemu"


def launcher_facts(spec, node_present, qemu_uses_device, conf_path=QEMU_CONF, daemons=LIBVIRT_DAEMONS):
    """The ``launcher`` fact: kind, libvirt's version and settings, and QEMU's way to userfaultfd."""
    daemon = libvirt_daemon(daemons)
    kind = choose_launcher(spec, daemon)
    version = libvirt_version(daemon) if (kind == "libvirt" and daemon) else None
    # Read for a bare QEMU too: its account comes from qemu.conf's user when the file sets one.
    settings, errors, state = read_libvirt_settings(version, conf_path)
    facts = {
        "kind": kind,
        "source": "option" if spec in LAUNCHERS else ("auto: %s is installed" % daemon if daemon else "auto: no libvirt QEMU daemon installed"),
        "daemon": daemon if kind == "libvirt" else None,
        "version": _version_text(version) if version else None,
        "config": {"path": conf_path, "state": state, "errors": errors},
        "settings": settings,
        "not_reproduced": not_reproduced(kind, settings, enforcing_lsms()),
    }
    if errors and kind == "libvirt":
        facts["device_path"] = _path("none", "qemu.conf cannot be judged (%s): libvirt would refuse to start with it" % errors[0], "libvirt_config")
    else:
        facts["device_path"] = choose_device_path(kind, version, settings, node_present, qemu_uses_device)
    return facts
