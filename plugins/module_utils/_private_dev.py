# -*- coding: utf-8 -*-
# Copyright: hypervisor.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The /dev libvirt gives a domain, made again in the probe child so the kernel answers for it.

libvirt 10.1+ starts QEMU in its own mount namespace with a tmpfs on /dev holding the nodes QEMU
may use, /dev/userfaultfd among them, owned by QEMU's account. The probe child does the same,
as root and before it becomes QEMU's account: a mount namespace of its own (private, so nothing
propagates to the host), a tmpfs on /dev, and one character device with the host node's number,
mode and QEMU's owner. Opening it after the switch is then the open QEMU makes. The host's
/dev and its node are never touched, and everything goes with the child.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import stat

__all__ = [
    "PrivateDevError",
    "make_private_dev",
]

_CLONE_NEWNS = 0x00020000
_MS_NOSUID = 0x2
_MS_NOEXEC = 0x8
_MS_REC = 0x4000
_MS_PRIVATE = 0x40000
# libvirt mounts the domain's /dev as a small tmpfs, mode 0755.
_TMPFS_OPTIONS = b"mode=755,size=65536"


class PrivateDevError(Exception):
    """The private /dev could not be made (no CAP_SYS_ADMIN, no mount namespaces)."""


def _libc():
    # Imported only on this path: ctypes costs milliseconds the default probe does not pay.
    import ctypes

    return ctypes, ctypes.CDLL(None, use_errno=True)


def _check(ctypes, result, what):
    if result != 0:
        err = ctypes.get_errno()
        raise PrivateDevError("%s failed: %s" % (what, os.strerror(err)))


def make_private_dev(node, uid, gid):
    """In the calling process only: /dev becomes a tmpfs holding node's twin, owned by uid:gid.

    node is os.stat() of the host's /dev/userfaultfd, taken before the mount hides it.
    """
    ctypes, libc = _libc()
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    _check(ctypes, libc.unshare(_CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _check(ctypes, libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None), "making / private")
    _check(ctypes, libc.mount(b"devfs", b"/dev", b"tmpfs", _MS_NOSUID | _MS_NOEXEC, _TMPFS_OPTIONS), "mounting a tmpfs on /dev")
    path = "/dev/userfaultfd"
    os.mknod(path, stat.S_IFCHR | stat.S_IMODE(node.st_mode), node.st_rdev)
    os.chown(path, uid, gid)
    os.chmod(path, stat.S_IMODE(node.st_mode))
    return path
