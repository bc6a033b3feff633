# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    # What postcopy_facts and postcopy_canary share: the QEMU they judge, QEMU's account (probe_user
    # in both), and the attributes of the action group
    # hypervisor.migration.postcopy (meta/runtime.yml), through which module_defaults sets these
    # once for both. Their timeouts stay their own: a probe takes milliseconds, a canary seconds.
    DOCUMENTATION = r"""
options:
  qemu_binary:
    description:
      - The host's QEMU binary, the one QEMU's account would run.
      - V(auto) looks for C(qemu-system-<arch>) in the system binary directories, then
        C(/usr/libexec/qemu-kvm).
      - Otherwise an absolute path to a regular executable file.
      - The binary and every directory above it must be owned by root (or the module's account) and not
        writable by group or others (sticky directories such as C(/tmp) allowed), because root reads it
        and runs it; it is used by its real path.
    type: str
    default: auto
    version_added: 1.0.0
attributes:
  action_group:
    description: Use C(group/hypervisor.migration.postcopy) in C(module_defaults) to set defaults for this module.
    support: full
    membership:
      - hypervisor.migration.postcopy
  diff_mode:
    support: none
    description: Nothing changes on the host, so there is nothing to diff.
  platform:
    support: full
    description: Target OS/families that can be operated against.
    platforms: posix
"""
