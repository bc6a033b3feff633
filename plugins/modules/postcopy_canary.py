#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hypervisor.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: postcopy_canary
short_description: Prove post-copy live migration works on this host with a real migration between two QEMUs
version_added: 1.0.0
description:
  - Performs a real post-copy live migration of RAM on the host, over a unix socket, between two
    throw-away QEMU processes started from the host's own QEMU binary as the account QEMU runs as.
  - The source QEMU boots a tiny guest the module generates (a 512-byte boot sector that keeps writing
    across its RAM, to one page in every eight, loaded by a 64 KiB firmware image of its own instead of SeaBIOS, so that
    it starts at once even under nested KVM and needs no disk). Pre-copy is throttled so it cannot finish, then C(migrate-start-postcopy)
    switches to post-copy; the destination runs the guest before its RAM has arrived and faults each
    missing page in through userfaultfd (RV(ansible_facts.postcopy_canary.postcopy_requests)).
    The module watches the QMP C(MIGRATION) events of both QEMUs until the migration completes or
    fails, then checks that the guest still runs, and still changes its memory, on the destination.
  - A host where post-copy fails is a fact (RV(ansible_facts.postcopy_canary.ok=false) with QEMU's own
    message in RV(ansible_facts.postcopy_canary.error)), not a failed task. The task fails only when the
    canary cannot run at all (no QEMU binary, a bad option), with one line saying why.
  - Both QEMUs run in their own process groups from a private temporary directory. They are killed and
    reaped and the directory is removed on success, on failure, on timeout, and when the module itself
    gets C(SIGTERM), C(SIGINT) or C(SIGHUP). If the module is killed outright, QEMU dies with it
    (parent-death signal); only the temporary directory C(postcopy-canary-*) may then be left behind.
  - With O(launcher=libvirt) both QEMUs are transient libvirt domains made from one domain XML (no disk, no NIC,
    the same firmware image as their ROM), created and driven with C(virsh) only, so that QEMU checks userfaultfd
    inside libvirt's real confinement (its account, its private C(/dev), its cgroup device ACL, its seccomp sandbox,
    its security labels). The destination is created paused and waits for the migration with C(-incoming defer).
    The source is a libvirt domain too, because only a QEMU whose command line libvirt wrote is certain to send a
    stream the libvirt-made destination can load. The domains are destroyed, and their logs in
    C(/var/log/libvirt/qemu) removed, on every way out; nothing is defined in libvirt.
  - The module never changes the host and never reports a change.
author:
  - hypervisor.migration developers (@hypervisor-migration)
options:
  probe_user:
    description:
      - The account both QEMUs run as, by name or numeric uid; the same resolution as the
        O(hypervisor.migration.postcopy_facts#module:probe_user) option of M(hypervisor.migration.postcopy_facts),
        so that C(module_defaults) for the action group C(group/hypervisor.migration.postcopy) sets QEMU's account
        once for both modules.
      - V(auto) takes C(user) from C(/etc/libvirt/qemu.conf) when set, else the first existing
        of C(qemu) and C(libvirt-qemu), else the module's own account.
      - Any account other than the module's own needs root (C(become)).
      - The alias C(run_as) is deprecated and will be removed in hypervisor.migration 2.0.0.
    type: str
    aliases: [run_as]
    default: auto
    version_added: 1.0.0
  accel:
    description:
      - The QEMU accelerator.
      - V(auto) is V(kvm) when C(/dev/kvm) is a character device that O(probe_user) may open read-write
        (by its mode, owner and group, the account's groups included), else V(tcg).
      - V(kvm) on a host where KVM does not work gives RV(ansible_facts.postcopy_canary.ok=false) with QEMU's message.
    type: str
    choices: [auto, kvm, tcg]
    default: auto
    version_added: 1.0.0
  memory_mb:
    description:
      - Guest RAM in MiB, between 16 and 65536. The guest writes to one page in every eight (every 32 KiB) from 1 MiB up to the end of its RAM, or to 2 GiB.
      - Both QEMUs may allocate this much, so up to twice this much memory is used for a moment.
    type: int
    default: 256
    version_added: 1.0.0
  timeout:
    description:
      - Seconds the whole canary may take, QEMU start and guest boot included, between 1 and 3600.
      - When it runs out, both QEMUs are killed and RV(ansible_facts.postcopy_canary.error) says which step was late.
    type: int
    default: 60
    version_added: 1.0.0
  sandbox:
    description:
      - Start QEMU with the seccomp sandbox libvirt uses by default
        (C(-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny)),
        so the canary sees what a libvirt-started QEMU sees.
      - Ignored with O(launcher=libvirt), where libvirt applies its own (C(seccomp_sandbox) in C(qemu.conf)).
    type: bool
    default: true
    version_added: 1.0.0
  launcher:
    description:
      - Who starts the two QEMUs, as in O(hypervisor.migration.postcopy_facts#module:launcher).
      - V(qemu) starts them as bare processes as O(probe_user).
      - V(libvirt) has libvirt start them as transient domains through C(virsh -c qemu:///system)
        (C(virsh) from the system binary directories, refused unless root's alone). QEMU then runs as
        C(qemu.conf)'s C(user); O(probe_user) may only name that account.
      - V(auto) is V(libvirt) when libvirt's QEMU daemon (C(virtqemud) or C(libvirtd)) is installed, else V(qemu).
    type: str
    choices: [auto, libvirt, qemu]
    default: auto
extends_documentation_fragment:
  - hypervisor.migration.common
attributes:
  check_mode:
    support: partial
    description: Can run in check_mode and return changed status prediction without modifying target.
    details:
      - Starts nothing and creates nothing; returns the QEMU command lines it would run (with O(launcher=libvirt),
        the C(virsh) commands and the domain XML they read), with RV(ansible_facts.postcopy_canary.ok) null.
        The work directory is shown as C(<workdir>).
  facts:
    support: full
    description: Returns C(ansible_facts.postcopy_canary).
notes:
  - Requires Linux and an x86 QEMU. Switching to O(probe_user) needs root.
  - The canary starts O(qemu_binary) twice. The guest is x86 machine code, so it must be an x86 QEMU
    (C(qemu-system-x86_64) or C(qemu-system-i386)).
  - With O(launcher=qemu), QEMU inherits the module's seccomp filter and LSM label. A QEMU started by libvirt may run
    under others (an SELinux or AppArmor profile of its own), which only O(launcher=libvirt) reproduces.
  - With O(launcher=libvirt), if the module is killed outright (C(SIGKILL)) the two transient domains
    C(postcopy-canary-*-source) and C(-destination) keep running until C(virsh destroy); any other way out destroys them.
  - Uses a QMP client of its own (standard library only); QEMU's Python packages are not needed.
requirements:
  - Python 3.8 or newer on the managed host.
  - An x86 QEMU (Debian and Ubuntu C(qemu-system-x86), Fedora and RHEL C(qemu-kvm)).
seealso:
  - module: hypervisor.migration.postcopy_facts
  - name: QEMU post-copy migration
    description: How post-copy works in QEMU.
    link: https://www.qemu.org/docs/master/devel/migration/postcopy.html
"""

EXAMPLES = r"""
- name: Migrate a throw-away guest with post-copy, as QEMU's account
  hypervisor.migration.postcopy_canary:

- name: Say what QEMU found
  ansible.builtin.debug:
    msg: >-
      {{ 'post-copy works: %d page requests, %d ms' % (ansible_facts.postcopy_canary.postcopy_requests, ansible_facts.postcopy_canary.total_time_ms)
         if ansible_facts.postcopy_canary.ok else 'post-copy fails: ' ~ ansible_facts.postcopy_canary.error }}

- name: Enable post-copy only where QEMU proved it works
  ansible.builtin.debug:
    msg: post-copy can be enabled on this host
  when: ansible_facts.postcopy_canary.ok

- name: Ask QEMU as libvirt starts it (its account, private /dev, cgroups, seccomp sandbox, labels)
  hypervisor.migration.postcopy_canary:
    launcher: libvirt
  become: true

- name: Confirm the facts' verdict with QEMU, under TCG, as libvirt's account
  hypervisor.migration.postcopy_canary:
    probe_user: libvirt-qemu
    accel: tcg
    memory_mb: 512
    timeout: 120
  become: true
  when: ansible_facts.postcopy_supported
"""

RETURN = r"""
ansible_facts:
  description: Facts to add to C(ansible_facts).
  returned: always
  type: complex
  contains:
    postcopy_canary:
      description: The outcome of the canary migration. Every key is always present, null when unknown.
      returned: always
      type: dict
      contains:
        ok:
          description:
            - Whether the post-copy migration completed, went through C(postcopy-active), and left the guest
              running and writing on the destination. Null in check mode.
          returned: always
          type: bool
          sample: true
        status:
          description:
            - The source's last migration status, as QEMU names it (C(completed), C(failed), C(active),
              C(postcopy-active), C(postcopy-paused), ...); C(none) when no migration started.
          returned: always
          type: str
          sample: completed
        error:
          description:
            - Why post-copy did not work, in QEMU's words where QEMU gave any (its QMP error, with what it
              wrote to stderr in parentheses), or which step timed out. Null when RV(ansible_facts.postcopy_canary.ok) is true.
          returned: always
          type: str
          sample: "Postcopy is not supported (postcopy_ram_supported_by_host: userfaultfd not available: Operation not permitted)"
        postcopy_active_seen:
          description: Whether either QEMU reported the C(postcopy-active) migration status.
          returned: always
          type: bool
          sample: true
        total_time_ms:
          description: The migration's total time as the source QEMU reports it, in milliseconds.
          returned: always
          type: int
          sample: 438
        downtime_ms:
          description: How long the guest was paused for the switch-over, as the source QEMU reports it, in milliseconds.
          returned: always
          type: int
          sample: 1
        setup_time_ms:
          description: The migration's setup time as the source QEMU reports it, in milliseconds.
          returned: always
          type: int
          sample: 1
        postcopy_requests:
          description: Pages the destination faulted on and requested from the source during post-copy (C(ram.postcopy-requests) of the source).
          returned: always
          type: int
          sample: 1446
        pages_transferred:
          description: Whole pages sent (C(ram.normal) of the source); zero pages travel as markers and are not counted.
          returned: always
          type: int
          sample: 65740
        bytes_transferred:
          description: Bytes of RAM migration stream sent (C(ram.transferred) of the source).
          returned: always
          type: int
          sample: 269799809
        guest_running_after:
          description: Whether the guest was running on the destination afterwards and its pass counter in RAM still advanced.
          returned: always
          type: bool
          sample: true
        wall_time_ms:
          description: Wall time of the whole canary, QEMU start, guest boot and cleanup included, in milliseconds. Null in check mode.
          returned: always
          type: float
          sample: 1414.3
        launcher:
          description: Who started the QEMUs, V(qemu) (bare processes) or V(libvirt) (transient domains); O(launcher=auto) resolved.
          returned: always
          type: str
          sample: libvirt
        qemu_binary:
          description: The QEMU binary started (with O(launcher=libvirt), the domains' C(<emulator>)).
          returned: always
          type: str
          sample: /usr/bin/qemu-system-x86_64
        qemu_version:
          description: Its version, null when it cannot be told.
          returned: always
          type: str
          sample: 7.2.22
        accel:
          description: The accelerator used, V(kvm) or V(tcg) (O(accel=auto) resolved).
          returned: always
          type: str
          sample: kvm
        memory_mb:
          description: Guest RAM in MiB.
          returned: always
          type: int
          sample: 256
        sandbox:
          description: Whether QEMU ran with libvirt's seccomp sandbox options (with O(launcher=libvirt), C(seccomp_sandbox) of C(qemu.conf) not 0).
          returned: always
          type: bool
          sample: true
        run_as:
          description:
            - The account QEMU ran as (O(probe_user) resolved), with C(name), C(uid), C(gid), C(groups), C(source)
              (V(auto) or V(option)) and C(reason).
          returned: always
          type: dict
          sample: {"name": "libvirt-qemu", "uid": 64055, "gid": 994, "groups": [994, 993], "source": "auto", "reason": "account libvirt-qemu exists"}
        commands:
          description:
            - The QEMU command lines, as lists, keyed C(source) and C(destination); empty when QEMU was never started.
            - With O(launcher=libvirt), the C(virsh create) command lines (the domain XML goes to their standard input).
          returned: always
          type: dict
          sample:
            source: [/usr/bin/qemu-system-x86_64, -accel, kvm, -m, "256", -display, none, -nodefaults, "..."]
            destination: [/usr/bin/qemu-system-x86_64, -accel, kvm, "...", -incoming, defer]
        domains:
          description: With O(launcher=libvirt), the transient domains' XML keyed C(source) and C(destination); empty otherwise.
          returned: always
          type: dict
          sample:
            destination: "<domain type='qemu' ...><name>postcopy-canary-k2j4x9qa-destination</name>...</domain>"
"""

import traceback

# First: the module_utils imported after it are compiled once from the zip payload.
from ansible_collections.hypervisor.migration.plugins.module_utils import _compile_once  # noqa: F401 pylint: disable=unused-import
from ansible_collections.hypervisor.migration.plugins.module_utils._canary import (
    ACCEL_CHOICES,
    LAUNCHER_CHOICES,
    MEMORY_MB_RANGE,
    TIMEOUT_RANGE,
    CanaryError,
    CanaryInterrupted,
    make_settings,
    planned_facts,
    run_canary,
)
from ansible_collections.hypervisor.migration.plugins.module_utils._options import new_module, one_line, qemu_option_errors, range_error

ARGUMENT_SPEC = dict(
    qemu_binary=dict(type="str", default="auto"),
    probe_user=dict(
        type="str", default="auto", aliases=["run_as"], deprecated_aliases=[dict(name="run_as", version="2.0.0", collection_name="hypervisor.migration")]
    ),
    accel=dict(type="str", choices=list(ACCEL_CHOICES), default="auto"),
    memory_mb=dict(type="int", default=256),
    timeout=dict(type="int", default=60),
    sandbox=dict(type="bool", default=True),
    launcher=dict(type="str", choices=list(LAUNCHER_CHOICES), default="auto"),
)


def option_errors(params):
    """What the argument spec cannot say: one message or None per check (new_module joins them)."""
    return [
        *qemu_option_errors(params),
        range_error("memory_mb", params["memory_mb"], *MEMORY_MB_RANGE),
        range_error("timeout", params["timeout"], *TIMEOUT_RANGE, unit=" seconds"),
    ]


def _canary_facts(module):
    settings = make_settings(**{name: module.params[name] for name in ARGUMENT_SPEC})
    if module.check_mode:
        return planned_facts(settings)
    return run_canary(settings)


def main():
    module = new_module(ARGUMENT_SPEC, option_errors, supports_check_mode=True)
    try:
        facts = _canary_facts(module)
    except (CanaryError, CanaryInterrupted) as exc:
        module.fail_json(msg=one_line(exc))
    except Exception as exc:  # last resort: a bug must still end the task in one line (-vvv shows where)
        module.fail_json(msg="postcopy_canary failed unexpectedly: %s: %s" % (exc.__class__.__name__, one_line(exc)), exception=traceback.format_exc())
    module.exit_json(changed=False, ansible_facts={"postcopy_canary": facts})


if __name__ == "__main__":
    main()
