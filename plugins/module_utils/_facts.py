# -*- coding: utf-8 -*-
# Copyright: hypervisor.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Everything postcopy_facts returns, assembled from the host, the QEMU binary and one probe."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import time

from ansible_collections.hypervisor.migration.plugins.module_utils._accounts import (
    NO_QEMU_ACCOUNT,
    account_switch_needed,
    resolve_account,
)
from ansible_collections.hypervisor.migration.plugins.module_utils._diagnose import diagnose
from ansible_collections.hypervisor.migration.plugins.module_utils._ffi import BACKEND_CHOICES, select_backend
from ansible_collections.hypervisor.migration.plugins.module_utils._host import (
    DEVICE_PATH,
    device_info,
    hugepage_sizes,
    kernel_release,
    page_size,
    unprivileged_userfaultfd,
)
from ansible_collections.hypervisor.migration.plugins.module_utils._launcher import LAUNCHER_CHOICES, launcher_facts
from ansible_collections.hypervisor.migration.plugins.module_utils._probe import MEMORY_BACKENDS, observe
from ansible_collections.hypervisor.migration.plugins.module_utils._qemu import (
    find_qemu_binary,
    qemu_uses_device,
    qemu_version,
)
from ansible_collections.hypervisor.migration.plugins.module_utils._switch import run_in_child
from ansible_collections.hypervisor.migration.plugins.module_utils._uapi import canonical_arch

__all__ = [
    "ARGUMENT_SPEC",
    "MAX_PAGE",
    "MAX_TIMEOUT",
    "MIN_PAGE",
    "gather_postcopy_facts",
]

# postcopy_facts' options: the module's argument spec, and the defaults a direct call gets.
ARGUMENT_SPEC = dict(
    probe_user=dict(type="str", default="auto"),
    memory_backends=dict(type="list", elements="str", choices=[memory.name for memory in MEMORY_BACKENDS], default=["anonymous"]),
    qemu_binary=dict(type="str", default="auto"),
    target_page_size=dict(type="int", default=4096),
    ffi_backend=dict(type="str", choices=list(BACKEND_CHOICES), default="auto"),
    launcher=dict(type="str", choices=list(LAUNCHER_CHOICES), default="auto"),
    timeout=dict(type="int", default=10),
)
# Bounds of the values the spec cannot express, checked by postcopy_facts' option_errors.
MIN_PAGE = 1024
MAX_PAGE = 1 << 30
MAX_TIMEOUT = 3600


def _qemu_facts(spec, timeout):
    binary = find_qemu_binary(spec)
    version = qemu_version(binary, timeout)
    facts = {"binary": binary, "version": version, "uses_device": qemu_uses_device(version), "note": None}
    if binary is None:
        facts["note"] = "no QEMU binary found; judged as QEMU 8.0 or newer, which opens /dev/userfaultfd first"
    elif version is None:
        facts["note"] = "could not read the version of %s; judged as QEMU 8.0 or newer" % binary
    return facts


def _qemu_account_name(account):
    """Whose verdict the probe is meant to give: QEMU's account, or None when auto found none."""
    return None if account.source == "auto" and account.reason == NO_QEMU_ACCOUNT else account.name


def _probe_account(spec, settings, warn):
    """The account to probe as, whether the probe switches to it, and QEMU's account's name.

    Without root the module probes as its own account, and says so.
    """
    account = resolve_account(spec, settings.get("user"), settings.get("group"))
    qemu_account = _qemu_account_name(account)
    if account_switch_needed(account) and os.geteuid() != 0:
        own = resolve_account(str(os.geteuid()))
        warn("probed as %s, not as QEMU's account %s: switching accounts needs root (run with --become)" % (own.name, account.name))
        reason = "asked for %s (%s) but cannot switch accounts without root" % (account.name, account.reason)
        return own._replace(source=account.source, reason=reason), False, qemu_account
    return account, account_switch_needed(account), qemu_account


def _probe_user_facts(account, switched, qemu_account):
    return {
        "name": account.name,
        "uid": account.uid,
        "gid": account.gid,
        "source": account.source,
        "reason": account.reason,
        "switched": switched,
        "qemu_account": qemu_account,
    }


def _private_dev_preparer(launcher, account, switch, warn):
    """(prepare, outcome): the child's private /dev when libvirt would give QEMU one, else (None, None)."""
    if launcher["device_path"]["kind"] != "libvirt_private_dev":
        return None, None
    # Imported here, in the parent: only hosts where libvirt gives QEMU a private /dev compile it.
    from ansible_collections.hypervisor.migration.plugins.module_utils._private_dev import PrivateDevError, make_private_dev

    outcome = {"reproduced": False, "error": None}
    if not switch and os.geteuid() != 0:
        outcome["error"] = "not root: cannot make the domain's private /dev"
        return None, outcome
    try:
        node = os.stat(DEVICE_PATH)
    except OSError as exc:
        outcome["error"] = "%s: %s" % (DEVICE_PATH, exc.strerror)
        return None, outcome

    def prepare():
        try:
            make_private_dev(node, account.uid, account.gid)
            outcome["reproduced"] = True
        except (PrivateDevError, OSError) as exc:
            outcome["error"] = str(exc)

    return prepare, outcome


def _access_facts(obs, device):
    if "access" not in obs:
        return None
    access = obs["access"]
    merged_device = dict(device)
    merged_device.update(access["device"])
    return {"device": merged_device, "syscall": access["syscall"], "used": access["used"]}


def _register_facts(obs):
    return dict((memory.name, obs["register"].get(memory.name)) for memory in MEMORY_BACKENDS)


def gather_postcopy_facts(params, warn=lambda msg: None):
    """Run one probe as QEMU's account and return the module's ansible_facts."""
    start = time.monotonic()
    options = dict((name, spec["default"]) for name, spec in ARGUMENT_SPEC.items())
    options.update((k, v) for k, v in params.items() if v is not None)
    qemu = _qemu_facts(options["qemu_binary"], options["timeout"])
    device = device_info(DEVICE_PATH)
    launcher = launcher_facts(options["launcher"], device["present"] and device["char_device"], qemu["uses_device"])
    account, switch, qemu_account = _probe_account(options["probe_user"], launcher["settings"], warn)
    prepare, private_dev = _private_dev_preparer(launcher, account, switch, warn)
    device_first = launcher["device_path"]["kind"] != "none"
    backend = select_backend(options["ffi_backend"])
    host_page = page_size()
    hugepages = hugepage_sizes()
    memory_backends = list(options["memory_backends"])

    def probe():
        obs = observe(backend, host_page, memory_backends, hugepages, device_first=device_first)
        # Set by prepare() in this same child, before the switch.
        obs["private_dev"] = private_dev
        return obs

    obs = run_in_child(probe, account if switch else None, timeout=options["timeout"], prepare=prepare)
    if obs.get("private_dev"):
        launcher["device_path"].update(obs["private_dev"])
        if not obs["private_dev"]["reproduced"]:
            # Whatever stopped it (no root, no host node, unshare or mknod refused in the child).
            warn("libvirt's private /dev could not be reproduced (%s): the host's /dev/userfaultfd was probed instead" % obs["private_dev"]["error"])
    sysctl = unprivileged_userfaultfd()
    missing, causes = diagnose(
        obs,
        {
            "sysctl": sysctl,
            "uses_device": qemu["uses_device"],
            "qemu_version": qemu["version"],
            "account_name": account.name,
            "device": device,
            "page_size": host_page,
            "target_page_size": options["target_page_size"],
            "memory_backends": memory_backends,
            "hugepages": hugepages,
            "launcher": launcher,
        },
    )
    details = {
        "kernel": kernel_release(),
        "arch": canonical_arch(),
        "page_size": host_page,
        "target_page_size": options["target_page_size"],
        "hugepage_sizes": hugepages,
        "memory_backends": memory_backends,
        "probe_user": _probe_user_facts(account, switch, qemu_account),
        "access": _access_facts(obs, device),
        "sysctl": {"vm.unprivileged_userfaultfd": sysctl},
        "seccomp": obs["status"]["seccomp"],
        "cap_sys_ptrace": obs["status"]["cap_sys_ptrace"],
        "user_namespace": obs["status"].get("user_namespace"),
        "memlock": obs.get("memlock"),
        "api": {"features": obs["api"].get("features", []), "ioctls": obs["api"].get("ioctls", [])} if obs["api"] else None,
        "register": _register_facts(obs),
        "qemu": qemu,
        "launcher": launcher,
        "causes": causes,
        "backend": backend.name,
        "duration_ms": round((time.monotonic() - start) * 1000.0, 2),
    }
    return {"postcopy_supported": not missing, "postcopy_missing_features": missing, "postcopy": details}
