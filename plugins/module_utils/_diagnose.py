# -*- coding: utf-8 -*-
# Copyright: hypervisor.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""From kernel answers to a verdict: missing features, their causes, and what an operator can do."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.hypervisor.migration.plugins.module_utils._probe import MEMORY_BACKENDS, requested_memory

__all__ = [
    "CAUSES",
    "FEATURES",
    "REMEDIES",
    "access_cause",
    "diagnose",
    "errno_cause",
]

# The order of postcopy_missing_features: the kernel's, then each memory backend's own, then memory locking.
FEATURES = (
    ("userfaultfd", "uffdio_api", "uffdio_register", "uffdio_unregister", "uffdio_wake", "uffdio_copy", "uffdio_zeropage", "target_page_size")
    + tuple(feature for row in MEMORY_BACKENDS for feature in row.features)
    + ("munlockall",)
)

# Every cause id with its one-line remedy.
REMEDIES = {
    "kernel_config": "Boot a kernel built with CONFIG_USERFAULTFD=y (5.7 or newer has every feature QEMU post-copy uses).",
    "unprivileged_userfaultfd_sysctl": (
        "Give QEMU's account /dev/userfaultfd (kernel 6.1+, QEMU 8.0+; role variable postcopy_grant_access=device), "
        "or set vm.unprivileged_userfaultfd=1, which opens userfaultfd to every local account."
    ),
    "seccomp": "Allow the userfaultfd syscall and its ioctls in the seccomp profile QEMU runs under (container runtime profile or systemd SystemCallFilter=).",
    "lsm": "Allow userfaultfd for QEMU's domain in the SELinux/AppArmor policy; the denial is in the audit log (ausearch -m avc -ts recent).",
    "device_permissions": (
        "Give QEMU's account read/write access to /dev/userfaultfd with a udev rule (MODE 0660, its group); "
        "role variable postcopy_grant_access=device does this."
    ),
    "qemu_too_old_for_device": "QEMU before 8.0 never opens /dev/userfaultfd: upgrade QEMU to 8.0+, or set vm.unprivileged_userfaultfd=1.",
    "libvirt_too_old_for_device": (
        "Upgrade libvirt to 10.1 or newer, which makes /dev/userfaultfd in each domain's private /dev, owned by QEMU's account; "
        "or set vm.unprivileged_userfaultfd=1, which opens userfaultfd to every local account. "
        "A udev rule for the host's /dev/userfaultfd cannot reach the domain's /dev."
    ),
    "device_not_in_cgroup_acl": (
        'Add "/dev/userfaultfd" to cgroup_device_acl in /etc/libvirt/qemu.conf (libvirt 10.1+ lists it by default) and restart libvirt; '
        "or set vm.unprivileged_userfaultfd=1, which opens userfaultfd to every local account."
    ),
    "libvirt_config": "Fix /etc/libvirt/qemu.conf where the message says: libvirt refuses to start with a file it cannot parse.",
    "resource_limit": "Raise the limit QEMU's account hit (RLIMIT_NOFILE, memory) or free the resource.",
    "page_size": "Use a target page size no larger than the host page size.",
    # Decided by the role, which runs the canary after the probe (feature id canary).
    "canary_failed": (
        "The probe passed but QEMU itself did not finish a post-copy migration: read QEMU's message and look at how QEMU runs "
        "here (its -sandbox seccomp filter, its SELinux or AppArmor label, cgroup limits); if the canary ran out of time, "
        "raise postcopy_canary_timeout."
    ),
}
# The cause ids, in the order the guide lists them: REMEDIES is the table.
CAUSES = tuple(REMEDIES)

_RESOURCE_ERRNOS = ("EMFILE", "ENFILE", "ENOMEM")
# mmap() says EAGAIN when the locked-memory limit is hit.
_STEP_RESOURCE_ERRNOS = _RESOURCE_ERRNOS + ("EAGAIN",)


def _cause(feature, cause, detail, remedy=None):
    return {"feature": feature, "cause": cause, "detail": detail, "remedy": remedy or REMEDIES[cause]}


def errno_cause(err, seccomp):
    """The cause of a failed ioctl/mmap/memfd step, judged from its errno and the seccomp mode."""
    if err in _STEP_RESOURCE_ERRNOS:
        return "resource_limit"
    if err in ("EPERM", "ENOSYS") and seccomp == 2:
        return "seccomp"
    if err == "EACCES":
        return "lsm"
    return "kernel_config"


def access_cause(syscall, seccomp, sysctl, cap_sys_ptrace):
    """Why the userfaultfd syscall failed; sysctl is None when the kernel lacks the knob."""
    err = syscall.get("errno")
    if err in _RESOURCE_ERRNOS:
        return "resource_limit"
    if err == "ENOSYS":
        # With the sysctl present the kernel has userfaultfd: ENOSYS came from a filter.
        return "seccomp" if (seccomp == 2 or sysctl is not None) else "kernel_config"
    if err == "EPERM":
        # The kernel waives only the sysctl check for user-mode-only fds, so this tells the
        # sysctl apart even when /proc/sys/vm cannot be read (sysctl None).
        if sysctl in (0, None) and not cap_sys_ptrace and syscall.get("user_mode_only_usable"):
            return "unprivileged_userfaultfd_sysctl"
        if seccomp == 2:
            return "seccomp"
        if sysctl == 0 and not cap_sys_ptrace:
            return "unprivileged_userfaultfd_sysctl"
        return "lsm"
    if err == "EACCES":
        return "lsm"
    return "kernel_config"


def _access_causes(obs, ctx):
    access = obs["access"]
    status = obs["status"]
    syscall, device = access["syscall"], access["device"]
    sysctl = ctx["sysctl"]
    cause = access_cause(syscall, status["seccomp"], sysctl, status["cap_sys_ptrace"])
    detail = "userfaultfd() as %s failed with %s" % (ctx["account_name"], syscall["errno"])
    if cause == "unprivileged_userfaultfd_sysctl":
        setting = "unreadable" if sysctl is None else "=%s" % sysctl
        detail += " (vm.unprivileged_userfaultfd%s, no CAP_SYS_PTRACE; a user-mode-only fd works)" % setting
    elif cause == "seccomp":
        detail += " under seccomp filter mode %s" % status["seccomp"]
    path = _device_path(ctx)
    remedy = None
    if cause == "unprivileged_userfaultfd_sysctl" and not ctx["uses_device"]:
        remedy = (
            "Set vm.unprivileged_userfaultfd=1 (QEMU %s cannot use /dev/userfaultfd; "
            "with QEMU 8.0+ granting the device is the narrower fix)." % ctx["qemu_version"]
        )
    elif cause == "unprivileged_userfaultfd_sysctl" and not path["host_grant_helps"]:
        remedy = "Set vm.unprivileged_userfaultfd=1, which opens userfaultfd to every local account; granting the host's /dev/userfaultfd cannot help: %s." % (
            path["reason"]
        )
    causes = [_cause("userfaultfd", cause, detail, remedy)]
    if path["blocked_by"] and ctx["uses_device"]:
        causes.append(_cause("userfaultfd", path["blocked_by"], path["reason"]))
    if not ctx["uses_device"] and device["usable"]:
        detail = "/dev/userfaultfd is usable but QEMU %s only uses the syscall" % ctx["qemu_version"]
        # The sysctl only helps when it is what refused the syscall (not seccomp, not an LSM).
        remedy = None if cause == "unprivileged_userfaultfd_sysctl" else "Upgrade QEMU to 8.0+, which opens /dev/userfaultfd (usable here) first."
        causes.append(_cause("userfaultfd", "qemu_too_old_for_device", detail, remedy))
    elif path["host_grant_helps"] and device["present"] and not device["usable"]:
        if device["errno"] in ("EACCES", "EPERM") and device["failed_step"] == "open":
            detail = "open(/dev/userfaultfd) as %s failed with %s (mode %s %s:%s)" % (
                ctx["account_name"],
                device["errno"],
                ctx["device"].get("mode"),
                ctx["device"].get("owner"),
                ctx["device"].get("group"),
            )
            causes.append(_cause("userfaultfd", "device_permissions", detail))
    return causes


def _device_path(ctx):
    """The launcher's way to /dev/userfaultfd; a bare QEMU's when the context has no launcher."""
    launcher = ctx.get("launcher")
    if launcher:
        return launcher["device_path"]
    helps = bool(ctx["uses_device"] and ctx["device"].get("present"))
    return {"kind": "host_node" if helps else "none", "reason": "", "blocked_by": None, "host_grant_helps": helps, "libvirt_grants": False}


def _api_causes(obs):
    api = obs["api"]
    seccomp = obs["status"]["seccomp"]
    if not api["ok"]:
        return {"uffdio_api": _cause("uffdio_api", errno_cause(api["errno"], seccomp), "UFFDIO_API (%s) failed with %s" % (api["step"], api["errno"]))}
    missing = {}
    for ioctl in ("REGISTER", "UNREGISTER"):
        if ioctl not in api["ioctls"]:
            feature = "uffdio_" + ioctl.lower()
            missing[feature] = _cause(feature, "kernel_config", "UFFDIO_API does not offer %s" % ioctl)
    return missing


def _memlock_causes(obs):
    memlock = obs.get("memlock")
    if not memlock or memlock["ok"]:
        return {}
    cause = errno_cause(memlock["errno"], obs["status"]["seccomp"])
    detail = "munlockall() failed with %s; QEMU calls it before registering guest RAM" % memlock["errno"]
    return {"munlockall": _cause("munlockall", cause, detail)}


def _register_causes(result, seccomp, register_feature, what, required=("WAKE", "COPY", "ZEROPAGE")):
    if result["ok"] is None:
        return {}
    if not result["ok"]:
        # A failed unregister keeps ok true (registering worked); it is judged below.
        detail = "%s of %s failed with %s" % (result["step"], what, result["errno"])
        return {register_feature: _cause(register_feature, errno_cause(result["errno"], seccomp), detail)}
    missing = {}
    for ioctl in required:
        if ioctl not in result["ioctls"]:
            feature = register_feature if register_feature != "uffdio_register" else "uffdio_" + ioctl.lower()
            missing[feature] = _cause(feature, "kernel_config", "registering %s does not offer %s" % (what, ioctl))
    if not result.get("unregister_ok", True):
        missing["uffdio_unregister"] = _cause("uffdio_unregister", errno_cause(result["errno"], seccomp), "unregister of %s failed" % what)
    return missing


def _memory_causes(obs, ctx):
    """Each requested row of MEMORY_BACKENDS: the kernel feature it needs, what else the host lacks, its registrations."""
    missing = {}
    seccomp = obs["status"]["seccomp"]
    for memory in requested_memory(ctx["memory_backends"]):
        if memory.needs and memory.needs not in obs["api"]["features"]:
            feature = "missing_" + memory.name
            missing[feature] = _cause(feature, "kernel_config", "UFFDIO_API does not offer %s" % memory.needs)
            continue
        shortfall = memory.shortfall(ctx["hugepages"])
        if shortfall:
            missing[shortfall[0]] = _cause(*shortfall)
            continue
        for what, result in memory.registrations(obs["register"].get(memory.name)):
            missing.update(_register_causes(result, seccomp, memory.feature, what, memory.ioctls))
    return missing


def diagnose(obs, ctx):
    """Return (missing feature ids in FEATURES order, causes) for one probe.

    ctx: sysctl, uses_device, qemu_version, account_name, device (device_info),
    page_size, target_page_size, memory_backends, hugepages.
    """
    causes = []
    if ctx["target_page_size"] > ctx["page_size"]:
        detail = "target page size %d is larger than the host page size %d" % (ctx["target_page_size"], ctx["page_size"])
        causes.append(_cause("target_page_size", "page_size", detail, "Use a target page size no larger than %d." % ctx["page_size"]))
    if obs["access"]["used"] is None:
        causes.extend(_access_causes(obs, ctx))
    elif obs["api"] is not None:
        found = _api_causes(obs) or _memlock_causes(obs)
        if not found and obs["register"]:
            found = _memory_causes(obs, ctx)
        causes.extend(found.values())
    missing = [feature for feature in FEATURES if any(c["feature"] == feature for c in causes)]
    return missing, causes
