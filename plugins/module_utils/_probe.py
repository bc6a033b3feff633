# -*- coding: utf-8 -*-
# Copyright: hypervisor.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The userfaultfd probe: what QEMU's host check does, observed call by call.

``observe`` runs in the (possibly account-switched) child and only records what the
kernel answered. ``diagnose`` runs anywhere and turns those answers into missing
features, causes and remedies.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import stat

from ansible_collections.hypervisor.migration.plugins.module_utils._host import (
    DEVICE_PATH,
    errno_name,
    process_status,
    userfaultfd_rdev,
)
from ansible_collections.hypervisor.migration.plugins.module_utils._uapi import (
    API_FEATURES,
    IOCTL_BITS,
    O_CLOEXEC,
    UFFD_API,
    UFFD_USER_MODE_ONLY,
    UFFDIO_REGISTER_MODE_MISSING,
    bits_to_names,
    mmap_flags,
)

__all__ = [
    "MEMORY_BACKENDS",
    "observe",
    "requested_memory",
]

_O_RDWR = os.O_RDWR
_MFD_CLOEXEC = 0x1
_MFD_HUGETLB = 0x4
_MFD_HUGE_SHIFT = 26


class _Resources(object):
    """Every fd and mapping the probe makes, released on every path.

    Each step gives back what it made as soon as it has its answer (``drop``), so the probe
    never holds more than two descriptors and one page: a tight RLIMIT_NOFILE or RLIMIT_AS
    is then judged as QEMU, which holds one userfaultfd, would meet it.
    """

    def __init__(self, backend):
        self.backend = backend
        self.fds = []
        self.maps = []

    def fd(self, fd):
        self.fds.append(fd)
        return fd

    def mapping(self, address, length):
        self.maps.append((address, length))
        return address

    def drop(self, fds=(), maps=()):
        for entry in maps:
            if entry in self.maps:
                self.maps.remove(entry)
                self.backend.munmap(*entry)
        for fd in fds:
            if fd in self.fds:
                self.fds.remove(fd)
                _close(fd)

    def release(self):
        while self.maps:
            self.backend.munmap(*self.maps.pop())
        while self.fds:
            _close(self.fds.pop())


def _close(fd):
    try:
        os.close(fd)
    except OSError:
        pass


def _device_node_error(path, expected):
    """None when path (or an open fd) is the userfaultfd misc device; else the errno name to record.

    The child may be root (probe_user root): it never opens, let alone sends an ioctl to,
    anything planted at the device's path instead, such as a regular file or a symlink to
    another device. expected is the device number sysfs announces, None when unknown.
    """
    try:
        info = os.stat(path)
    except OSError as exc:
        return errno_name(exc.errno)
    if not stat.S_ISCHR(info.st_mode) or (expected is not None and info.st_rdev != expected):
        return "ENODEV"
    return None


def _open_via_device(backend, res, path):
    """QEMU >= 8.0: open the device, then ask it for a new userfaultfd. Returns (fd, errno, step)."""
    expected = userfaultfd_rdev()
    wrong = _device_node_error(path, expected)
    if wrong is not None:
        return -1, wrong, "type"
    try:
        dev = os.open(path, _O_RDWR | O_CLOEXEC)
    except OSError as exc:
        return -1, exc.errno, "open"
    try:
        # Replaced between stat() and open(): still not ours to send ioctls to.
        if _device_node_error(dev, expected) is not None:
            return -1, "ENODEV", "type"
        fd, err = backend.ioctl_int(dev, backend.requests["USERFAULTFD_IOC_NEW"], O_CLOEXEC)
    finally:
        os.close(dev)
    if fd >= 0:
        res.fd(fd)
    return fd, err, "ioctl"


def _open_via_syscall(backend, res, flags=O_CLOEXEC):
    fd, err = backend.userfaultfd(flags)
    if fd >= 0:
        res.fd(fd)
    return fd, err


def _observe_access(backend, res, device_path, device_first):
    present = os.path.exists(device_path)
    dev_fd, dev_err, dev_step = (-1, None, None)
    # Each fd only proves a path works: closed at once, so no step runs short of descriptors.
    if present:
        dev_fd, dev_err, dev_step = _open_via_device(backend, res, device_path)
        res.drop(fds=[dev_fd])
    sys_fd, sys_err = _open_via_syscall(backend, res)
    res.drop(fds=[sys_fd])
    umo_fd, umo_err = _open_via_syscall(backend, res, O_CLOEXEC | UFFD_USER_MODE_ONLY)
    res.drop(fds=[umo_fd])
    access = {
        "device": {"present": present, "usable": dev_fd >= 0, "errno": _errno_text(dev_err), "failed_step": dev_step if dev_fd < 0 else None},
        "syscall": {"usable": sys_fd >= 0, "errno": errno_name(sys_err), "user_mode_only_usable": umo_fd >= 0, "user_mode_only_errno": errno_name(umo_err)},
    }
    if device_first and dev_fd >= 0:
        used = "device"
    elif sys_fd >= 0:
        used = "syscall"
    else:
        used = None
    access["used"] = used
    return access


def _new_fd(backend, res, used, device_path):
    if used == "device":
        fd, err, _step = _open_via_device(backend, res, device_path)
    else:
        fd, err = _open_via_syscall(backend, res)
    return fd, err


def _observe_api(backend, res, used, device_path):
    """Features on a throw-away fd, then the real handshake (UFFDIO_API works once per fd)."""
    probe_fd, err = _new_fd(backend, res, used, device_path)
    if probe_fd < 0:
        return {"ok": False, "errno": _errno_text(err), "step": "open"}, None
    ret, err, offered, _ioctls = backend.uffdio_api(probe_fd, UFFD_API, 0)
    res.drop(fds=[probe_fd])
    if ret != 0:
        return {"ok": False, "errno": errno_name(err), "step": "query"}, None
    fd, err = _new_fd(backend, res, used, device_path)
    if fd < 0:
        return {"ok": False, "errno": _errno_text(err), "step": "open"}, None
    wanted = offered & (1 << API_FEATURES["THREAD_ID"])
    ret, err, _features, ioctls = backend.uffdio_api(fd, UFFD_API, wanted)
    api = {
        "ok": ret == 0,
        "errno": errno_name(err),
        "step": "handshake",
        "features": bits_to_names(offered, API_FEATURES),
        "ioctls": bits_to_names(ioctls, IOCTL_BITS) if ret == 0 else [],
    }
    if ret != 0:
        res.drop(fds=[fd])
        return api, None
    return api, fd


def _observe_munlockall(backend):
    """QEMU calls munlockall() before registering RAM, and refuses post-copy when it fails.

    munlockall() stays out of the module's own process; here it runs in the forked
    child, which holds no memory locks (they are not inherited across fork), so it changes nothing
    and only shows whether a filter (e.g. systemd's SystemCallFilter=~@memlock) denies it.
    """
    ret, err = backend.munlockall()
    return {"ok": ret == 0, "errno": errno_name(err)}


def _register_range(backend, fd, address, length):
    ret, err, ioctls = backend.uffdio_register(fd, address, length, UFFDIO_REGISTER_MODE_MISSING)
    if ret != 0:
        return {"ok": False, "errno": errno_name(err), "step": "register", "ioctls": []}
    result = {"ok": True, "errno": None, "step": None, "ioctls": bits_to_names(ioctls, IOCTL_BITS), "unregister_ok": True}
    # Never touch the registered page: a fault there would block until someone resolves it.
    ret, err = backend.uffdio_unregister(fd, address, length)
    if ret != 0:
        result.update(unregister_ok=False, errno=errno_name(err), step="unregister")
    return result


def _map_and_register(backend, res, fd, length, flags, backing_fd=-1):
    consts = mmap_flags()
    address, err = backend.mmap(length, consts["PROT_READ"] | consts["PROT_WRITE"], flags, backing_fd, 0)
    if address is None:
        result = {"ok": False, "errno": errno_name(err), "step": "mmap", "ioctls": []}
    else:
        res.mapping(address, length)
        result = _register_range(backend, fd, address, length)
    res.drop(fds=[backing_fd] if backing_fd >= 0 else [], maps=[(address, length)] if address is not None else [])
    return result


def _errno_text(err):
    """errno_name for a number; names recorded without a call (the device checks) pass through."""
    return err if isinstance(err, str) else errno_name(err)


def _memfd(res, size, flags):
    create = getattr(os, "memfd_create", None)
    if create is None:
        return -1, "ENOSYS"
    memfd = -1
    try:
        memfd = res.fd(create("hvm-postcopy-probe", flags))
        os.ftruncate(memfd, size)
    except OSError as exc:
        res.drop(fds=[memfd])
        return -1, errno_name(exc.errno)
    return memfd, None


def _observe_hugepage(backend, res, fd, size, free):
    flags = _MFD_CLOEXEC | _MFD_HUGETLB | ((size.bit_length() - 1) << _MFD_HUGE_SHIFT)
    memfd, err = _memfd(res, size, flags)
    if memfd < 0:
        return {"ok": False, "errno": err, "step": "memfd_create", "ioctls": []}
    result = _map_and_register(backend, res, fd, size, mmap_flags()["MAP_SHARED"], memfd)
    if not result["ok"] and result["step"] == "mmap" and result["errno"] == "ENOMEM" and free == 0:
        # Every reserved page is in use by guests: nothing left to test with, not a defect.
        result.update(ok=None, step="skipped", errno=None)
    return result


class _Memory(object):
    """A row of MEMORY_BACKENDS, one guest RAM backing: how the probe registers one page of it
    (``observe``), and what diagnosis reports when that fails: missing_<name> when the kernel does
    not offer the UFFDIO_API feature it ``needs``, its ``shortfall`` on the host, else ``feature``
    for a failed registration or one that lacks any of ``ioctls``."""

    always = False
    needs = None
    features = ()  # its own feature ids, in the order postcopy_missing_features lists them
    what = None
    ioctls = ("WAKE", "COPY", "ZEROPAGE")

    def shortfall(self, hugepages):
        """(feature, cause, detail, remedy) for what the host lacks besides the kernel; None."""
        return None

    def registrations(self, observed):
        """(what was registered, its result) for each registration observe tried."""
        return [(self.what, observed)]


class _Anonymous(_Memory):
    name = "anonymous"
    always = True  # ordinary guest RAM: QEMU registers it whatever else the guests use
    feature = "uffdio_register"
    what = "an anonymous page"

    def observe(self, backend, res, fd, page, hugepages):
        consts = mmap_flags()
        return _map_and_register(backend, res, fd, page, consts["MAP_PRIVATE"] | consts["MAP_ANONYMOUS"])


class _Shmem(_Memory):
    name = "shmem"
    needs = "MISSING_SHMEM"
    features = ("missing_shmem", "shmem_register")
    feature = "shmem_register"
    what = "a shared memfd page"

    def observe(self, backend, res, fd, page, hugepages):
        memfd, err = _memfd(res, page, _MFD_CLOEXEC)
        if memfd < 0:
            return {"ok": False, "errno": err, "step": "memfd_create", "ioctls": []}
        return _map_and_register(backend, res, fd, page, mmap_flags()["MAP_SHARED"], memfd)


class _Hugetlbfs(_Memory):
    name = "hugetlbfs"
    needs = "MISSING_HUGETLBFS"
    features = ("missing_hugetlbfs", "hugetlbfs_register", "hugepages_reserved")
    feature = "hugetlbfs_register"
    ioctls = ("COPY",)

    def observe(self, backend, res, fd, page, hugepages):
        sizes = {}
        for size, counts in sorted((hugepages or {}).items()):
            if counts.get("total"):
                sizes[size] = _observe_hugepage(backend, res, fd, size, counts.get("free", 0))
        return {"sizes": sizes}

    def shortfall(self, hugepages):
        if any(counts.get("total") for counts in hugepages.values()):
            return None
        detail = "no huge pages are reserved (sizes offered: %s)" % ", ".join(str(s) for s in sorted(hugepages))
        return "hugepages_reserved", "resource_limit", detail, "Reserve huge pages for guests: vm.nr_hugepages or hugepages= on the kernel command line."

    def registrations(self, observed):
        sizes = (observed or {}).get("sizes", {})
        return [("a %s-byte huge page" % size, sizes[size]) for size in sorted(sizes, key=int)]


MEMORY_BACKENDS = (_Anonymous(), _Shmem(), _Hugetlbfs())


def requested_memory(names):
    """The rows of MEMORY_BACKENDS the probe tries for memory_backends names, in table order."""
    return [memory for memory in MEMORY_BACKENDS if memory.always or memory.name in names]


def observe(backend, page_size, memory_backends=("anonymous",), hugepages=None, device_first=True, device_path=DEVICE_PATH):
    """Record, as the calling process, every kernel answer the verdict needs."""
    res = _Resources(backend)
    result = {"status": process_status(), "uid": os.geteuid(), "gid": os.getegid(), "api": None, "memlock": None, "register": {}}
    try:
        result["access"] = _observe_access(backend, res, device_path, device_first)
        used = result["access"]["used"]
        if used is None:
            return result
        result["api"], fd = _observe_api(backend, res, used, device_path)
        if fd is None:
            return result
        result["memlock"] = _observe_munlockall(backend)
        if not result["memlock"]["ok"]:
            return result
        for memory in requested_memory(memory_backends):
            result["register"][memory.name] = memory.observe(backend, res, fd, page_size, hugepages)
        return result
    finally:
        res.release()
