#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hypervisor.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: postcopy_facts
short_description: Tell whether QEMU on this host can do post-copy live migration of RAM
version_added: 1.0.0
description:
  - Probes the host's userfaultfd support the way QEMU does when post-copy migration is switched on,
    as the account QEMU runs as, and returns the verdict as host facts.
  - The probe opens C(/dev/userfaultfd) (QEMU 8.0 and newer try it first) and calls the C(userfaultfd)
    syscall, negotiates C(UFFDIO_API), and registers one page of each requested guest memory backing.
  - Every native call runs in a forked child process that has switched to O(probe_user); the module
    waits at most O(timeout) seconds for it, so a crash or hang of the probe cannot take Ansible down.
  - A host that cannot do post-copy is a fact (RV(ansible_facts.postcopy_supported=false)) with
    the missing features, their causes and remedies, never a failed task.
  - The module never changes the host.
  - It can be listed in C(facts_modules) so that C(gather_facts) collects the verdict.
author:
  - hypervisor.migration developers (@hypervisor-migration)
options:
  probe_user:
    description:
      - The account QEMU runs as, by name or numeric uid.
      - V(auto) takes C(user) from C(/etc/libvirt/qemu.conf) when set (a name, or libvirt's C(+N) numeric
        form), else the first existing of C(qemu) and C(libvirt-qemu), else the module's own account.
        A C(user) that names no account on the host, or a C(qemu.conf) libvirt could not parse, fails
        the task naming the file and line; it never falls back to root.
        RV(ansible_facts.postcopy.probe_user) says which account was used and why.
      - Switching accounts needs root (C(become)); without root the module probes as itself, warns, and
        says so in RV(ansible_facts.postcopy.probe_user).
    type: str
    default: auto
    version_added: 1.0.0
  memory_backends:
    description:
      - Guest RAM backings that must support post-copy.
      - V(anonymous) is ordinary guest RAM; V(shmem) is shared memory (memfd, vhost-user guests);
        V(hugetlbfs) is huge page backed guest RAM and also needs huge pages reserved.
    type: list
    elements: str
    choices: [anonymous, shmem, hugetlbfs]
    default: [anonymous]
    version_added: 1.0.0
  target_page_size:
    description:
      - The guest's target page size in bytes; post-copy needs it no larger than the host page size.
      - A power of two between 1024 and 1073741824.
    type: int
    default: 4096
    version_added: 1.0.0
  ffi_backend:
    description:
      - How the probe makes its system calls.
      - V(auto) uses cffi (out-of-line ABI mode) when the managed host's Python has cffi's C extension
        C(_cffi_backend), else ctypes. The declarations ship precompiled, so the C(cffi) package and
        pycparser are not needed; Debian's C(python3-cffi-backend) is enough.
      - V(cffi) fails when C(_cffi_backend) is missing; V(ctypes) needs nothing beyond the standard library.
    type: str
    choices: [auto, cffi, ctypes]
    default: auto
    version_added: 1.0.0
  launcher:
    description:
      - What starts QEMU on this host, which decides how QEMU gets userfaultfd.
      - V(libvirt) reads C(/etc/libvirt/qemu.conf) with libvirt's own grammar and libvirt's version
        (from its QEMU driver daemon). libvirt 10.1 and newer make C(/dev/userfaultfd) in each domain's
        private C(/dev), owned by QEMU's account; the probe child then makes the same node in a mount
        namespace of its own and opens it as QEMU's account, so the kernel answers for that node.
        The host's C(/dev/userfaultfd) is never touched.
      - V(qemu) judges a bare QEMU started by hand or by another tool as QEMU's account, with the host's
        C(/dev/userfaultfd) as it is.
      - V(auto) is V(libvirt) when C(virtqemud) or C(libvirtd) is installed in C(/usr/sbin), else V(qemu).
      - RV(ansible_facts.postcopy.launcher) says what was found and how QEMU would open userfaultfd.
    type: str
    choices: [auto, libvirt, qemu]
    default: auto
    version_added: 1.0.0
  timeout:
    description:
      - Seconds to wait for the probe child before killing it and failing the task.
      - Between 1 and 3600.
    type: int
    default: 10
    version_added: 1.0.0
extends_documentation_fragment:
  - hypervisor.migration.common
attributes:
  check_mode:
    support: full
    description: The module only reads; it runs the same way in check mode.
  facts:
    support: full
    description: Returns C(ansible_facts) and can be used in C(facts_modules).
notes:
  - Requires Linux. The probe needs root to switch to O(probe_user).
  - The version of O(qemu_binary) decides whether C(/dev/userfaultfd) counts. QEMU 8.0 and newer open
    it first, older QEMU only uses the syscall. When O(qemu_binary=auto) finds no QEMU the host is
    judged as for current QEMU, and the C(note) in RV(ansible_facts.postcopy.qemu) says so. Root runs
    the binary only for C(--version), when it carries no version banner.
  - The child probes under the same seccomp filter and LSM label as the module. A QEMU started by
    libvirt may run under others; M(hypervisor.migration.postcopy_canary) runs a real migration.
requirements:
  - Python 3.8 or newer on the managed host.
  - cffi's C extension C(_cffi_backend) on the managed host for O(ffi_backend=cffi) (optional).
seealso:
  - module: hypervisor.migration.postcopy_canary
  - name: Kernel documentation on userfaultfd
    description: The interface this module probes.
    link: https://docs.kernel.org/admin-guide/mm/userfaultfd.html
"""

EXAMPLES = r"""
- name: Gather post-copy facts for QEMU's account
  hypervisor.migration.postcopy_facts:

- name: Say what is missing and why
  ansible.builtin.debug:
    msg: "{{ item.feature }}: {{ item.cause }} - {{ item.remedy }}"
  loop: "{{ ansible_facts.postcopy.causes }}"

- name: Enable post-copy only where it will work
  ansible.builtin.debug:
    msg: post-copy can be enabled on this host
  when: ansible_facts.postcopy_supported

- name: Require shared memory and huge page guests to work too
  hypervisor.migration.postcopy_facts:
    memory_backends: [anonymous, shmem, hugetlbfs]
    probe_user: libvirt-qemu

- name: Collect the verdict during fact gathering
  # In ansible.cfg: [defaults] facts_modules = ansible.builtin.setup, hypervisor.migration.postcopy_facts
  # or per play, through the ansible_facts_modules variable.
  ansible.builtin.gather_facts:
  vars:
    ansible_facts_modules:
      - ansible.builtin.setup
      - hypervisor.migration.postcopy_facts
"""

RETURN = r"""
ansible_facts:
  description: Facts to add to C(ansible_facts).
  returned: always
  type: complex
  contains:
    postcopy_supported:
      description: Whether QEMU, as O(probe_user), can do post-copy migration of the requested memory backings.
      returned: always
      type: bool
      sample: true
    postcopy_missing_features:
      description:
        - Stable ids of what is missing, empty when supported. One of C(userfaultfd), C(uffdio_api),
          C(uffdio_register), C(uffdio_unregister), C(uffdio_wake), C(uffdio_copy), C(uffdio_zeropage),
          C(target_page_size), C(missing_shmem), C(shmem_register), C(missing_hugetlbfs), C(hugetlbfs_register),
          C(hugepages_reserved), C(munlockall).
      returned: always
      type: list
      elements: str
      sample: [userfaultfd]
    postcopy:
      description: The details behind the verdict. Every key is always present, null when unknown.
      returned: always
      type: dict
      contains:
        kernel:
          description: Kernel release.
          returned: always
          type: str
          sample: 6.18.44
        arch:
          description: Machine architecture.
          returned: always
          type: str
          sample: x86_64
        page_size:
          description: Host page size in bytes.
          returned: always
          type: int
          sample: 4096
        target_page_size:
          description: The O(target_page_size) judged.
          returned: always
          type: int
          sample: 4096
        hugepage_sizes:
          description: Huge page sizes the kernel offers, in bytes, with reserved (C(total)) and C(free) counts.
          returned: always
          type: dict
          sample: {"2097152": {"total": 0, "free": 0}}
        memory_backends:
          description: The O(memory_backends) judged.
          returned: always
          type: list
          elements: str
          sample: [anonymous]
        probe_user:
          description:
            - The account probed as, with C(name), C(uid), C(gid), C(source) (V(auto) or V(option)) and C(reason).
            - C(qemu_account) is the account the verdict is meant for, QEMU's account (from O(probe_user));
              null when O(probe_user=auto) found no QEMU account, and the verdict is then the module's own account's.
            - C(switched) is true when the probe child switched to C(name). It is false when the module already ran
              as that account, and also when the module was not root and so probed as itself instead of
              C(qemu_account) (with a warning). The verdict is QEMU's only when C(name) equals C(qemu_account).
          returned: always
          type: dict
          sample:
            name: libvirt-qemu
            uid: 64055
            gid: 994
            source: auto
            reason: account libvirt-qemu exists (libvirt's default QEMU account)
            switched: true
            qemu_account: libvirt-qemu
        access:
          description:
            - How a userfaultfd can be had as the probe account. C(device) describes C(/dev/userfaultfd)
              (C(present), C(mode), C(owner), C(group), C(usable), C(errno), C(failed_step));
              C(syscall) the C(userfaultfd) syscall (C(usable), C(errno), C(user_mode_only_usable),
              C(user_mode_only_errno)); C(used) the path QEMU would take (V(device), V(syscall) or null).
          returned: always
          type: dict
          sample:
            device: {path: /dev/userfaultfd, present: true, mode: "0600", owner: root, group: root, usable: false, errno: EACCES}
            syscall: {usable: false, errno: EPERM, user_mode_only_usable: true, user_mode_only_errno: null}
            used: null
        sysctl:
          description: C(vm.unprivileged_userfaultfd), null when the kernel has no such setting.
          returned: always
          type: dict
          sample: {"vm.unprivileged_userfaultfd": 0}
        seccomp:
          description: Seccomp mode of the probing process (0 none, 1 strict, 2 filter).
          returned: always
          type: int
          sample: 0
        cap_sys_ptrace:
          description:
            - Whether the probing process had C(CAP_SYS_PTRACE) in the initial user namespace, which bypasses the sysctl.
            - False inside a user namespace (a rootless container), where the capability does not count for userfaultfd.
          returned: always
          type: bool
          sample: false
        user_namespace:
          description: V(initial) when the probe ran in the host's user namespace, V(nested) inside another one.
          returned: always
          type: str
          sample: initial
        memlock:
          description:
            - Whether C(munlockall) succeeded (C(ok), C(errno)). QEMU calls it before registering guest RAM and
              refuses post-copy when a filter denies it. Null when no userfaultfd could be had.
            - Called only in the forked probe child, which holds no memory locks.
          returned: always
          type: dict
          sample: {"ok": true, "errno": null}
        api:
          description: Features and ioctls C(UFFDIO_API) offered; null when no userfaultfd could be had.
          returned: always
          type: dict
          sample: {"features": ["MISSING_HUGETLBFS", "MISSING_SHMEM", "THREAD_ID"], "ioctls": ["REGISTER", "UNREGISTER", "API"]}
        register:
          description: Result of registering one page of each backing (C(anonymous), C(shmem), C(hugetlbfs)); null when not tried.
          returned: always
          type: dict
          sample: {"anonymous": {"ok": true, "ioctls": ["WAKE", "COPY", "ZEROPAGE"]}, "shmem": null, "hugetlbfs": null}
        qemu:
          description: The QEMU judged (C(binary), C(version), C(uses_device)) and a C(note) when it had to guess.
          returned: always
          type: dict
          sample: {"binary": /usr/bin/qemu-system-x86_64, "version": "7.2.22", "uses_device": false, "note": null}
        launcher:
          description:
            - What starts QEMU (C(kind) V(libvirt) or V(qemu)) and why (C(source)); for libvirt its C(daemon) and C(version).
            - C(config) is C(/etc/libvirt/qemu.conf) as read (C(state) V(read), V(absent) or V(refused), C(errors) one line each);
              C(settings) holds C(user), C(group), C(namespaces), C(cgroup_device_acl), C(dynamic_ownership), C(security_driver)
              and C(seccomp_sandbox), each with its C(value) and C(source) (a file and line, or V(compiled default)).
            - C(device_path) says how QEMU would open userfaultfd, C(kind) one of V(libvirt_private_dev), V(host_node), V(none),
              with a C(reason); C(blocked_by) is the cause id when the launcher keeps a node from QEMU; C(host_grant_helps) says
              whether a grant of the host's node (a udev rule) can reach QEMU; C(libvirt_grants) that libvirt already gives it one.
              For V(libvirt_private_dev), C(reproduced) says whether the probe made that node and opened it, and C(error) why not.
            - C(not_reproduced) names confinement the probe cannot take on (an enforcing SELinux or AppArmor label for QEMU).
          returned: always
          type: dict
          sample:
            kind: libvirt
            source: "auto: /usr/sbin/virtqemud is installed"
            daemon: /usr/sbin/virtqemud
            version: "11.3.0"
            config: {"path": /etc/libvirt/qemu.conf, "state": read, "errors": []}
            settings:
              user: {"value": libvirt-qemu, "source": compiled default}
              namespaces: {"value": [mount], "source": compiled default}
            device_path:
              kind: libvirt_private_dev
              reason: libvirt 11.3.0 makes /dev/userfaultfd in the domain's private /dev, owned by QEMU's account
              blocked_by: null
              host_grant_helps: false
              libvirt_grants: true
              reproduced: true
              error: null
            not_reproduced: []
        causes:
          description: One entry per missing feature and cause, with a C(detail) and a one-line C(remedy).
          returned: always
          type: list
          elements: dict
          sample:
            - feature: userfaultfd
              cause: unprivileged_userfaultfd_sysctl
              detail: userfaultfd() as libvirt-qemu failed with EPERM
              remedy: Give QEMU's account /dev/userfaultfd, or set vm.unprivileged_userfaultfd=1.
        backend:
          description: The FFI backend that made the calls.
          returned: always
          type: str
          sample: cffi
        duration_ms:
          description: Wall time of the probe, account switch included, in milliseconds.
          returned: always
          type: float
          sample: 3.1
"""

import traceback

from ansible.module_utils.basic import missing_required_lib

# First: the module_utils imported after it are compiled once from the zip payload.
from ansible_collections.hypervisor.migration.plugins.module_utils import _compile_once  # noqa: F401 pylint: disable=unused-import
from ansible_collections.hypervisor.migration.plugins.module_utils._accounts import AccountError
from ansible_collections.hypervisor.migration.plugins.module_utils._facts import ARGUMENT_SPEC, MAX_PAGE, MAX_TIMEOUT, MIN_PAGE, gather_postcopy_facts
from ansible_collections.hypervisor.migration.plugins.module_utils._ffi import CFFI_IMPORT_ERROR, HAS_CFFI, BackendUnavailable
from ansible_collections.hypervisor.migration.plugins.module_utils._options import new_module, one_line, qemu_option_errors, range_error
from ansible_collections.hypervisor.migration.plugins.module_utils._qemu import QemuBinaryError
from ansible_collections.hypervisor.migration.plugins.module_utils._switch import ChildError
from ansible_collections.hypervisor.migration.plugins.module_utils._uapi import UnsupportedArch


def option_errors(params):
    """What the argument spec cannot say: one message or None per check (new_module joins them)."""
    size = params["target_page_size"]
    return [
        None if MIN_PAGE <= size <= MAX_PAGE and not size & (size - 1) else
        "target_page_size must be a power of two between %d and %d, got %d" % (MIN_PAGE, MAX_PAGE, size),
        range_error("timeout", params["timeout"], 1, MAX_TIMEOUT, " seconds"),
        *qemu_option_errors(params),
        None if params["memory_backends"] else "memory_backends must name at least one of " + ", ".join(ARGUMENT_SPEC["memory_backends"]["choices"]),
    ]


def _gather(module):
    """The facts, or a one-line failure naming what stopped the probe."""
    try:
        return gather_postcopy_facts(module.params, warn=module.warn)
    except AccountError as exc:
        module.fail_json(msg="probe_user: %s" % exc)
    except (QemuBinaryError, UnsupportedArch, BackendUnavailable) as exc:
        module.fail_json(msg=one_line(exc))
    except ChildError as exc:
        module.fail_json(msg="could not probe userfaultfd: %s" % one_line(exc))
    except MemoryError:
        module.fail_json(msg="could not probe userfaultfd: out of memory")
    except OSError as exc:
        module.fail_json(msg="could not probe userfaultfd: %s" % one_line(exc))


def main():
    module = new_module(ARGUMENT_SPEC, option_errors, supports_check_mode=True)
    if module.params["ffi_backend"] == "cffi" and not HAS_CFFI:
        module.fail_json(msg=missing_required_lib("cffi", reason="for ffi_backend=cffi"), exception=CFFI_IMPORT_ERROR)
    try:
        facts = _gather(module)
    except Exception as exc:  # last resort: a bug must still end the task in one line (-vvv shows where)
        module.fail_json(msg="postcopy_facts failed unexpectedly: %s: %s" % (exc.__class__.__name__, one_line(exc)), exception=traceback.format_exc())
    module.exit_json(changed=False, ansible_facts=facts)


if __name__ == "__main__":
    main()
