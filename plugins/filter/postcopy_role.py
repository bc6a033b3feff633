# -*- coding: utf-8 -*-
# Copyright: hypervisor.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters behind the role hypervisor.migration.postcopy: the checks of its variables, the verdict it
records per host, whether a grant of access applies, the peer groups it judges once per play, the
decision and its reason per host, and the data of its report.

The role's tasks only pass variables and facts in and store what comes out; every rule lives here,
where a unit test can reach it."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import copy
import json
import re
from collections.abc import Mapping

from ansible.errors import AnsibleFilterError
from ansible.module_utils.common.collections import is_sequence
from ansible.module_utils.parsing.convert_bool import boolean
from ansible.utils.display import Display

display = Display()

COLLECTION = "hypervisor.migration"

# The role switch that used to share its name with the canary's fact, and the release without it.
CANARY_SWITCH = "postcopy_run_canary"
CANARY_SWITCH_ALIAS = "postcopy_canary"
CANARY_SWITCH_ALIAS_REMOVED_IN = "2.0.0"

# What the role adds to the probe's verdict when the canary migration fails.
CANARY_FEATURE = "canary"
CANARY_CAUSE = "canary_failed"
CANARY_REMEDY = (
    "The probe passed but QEMU itself did not finish a post-copy migration: read QEMU's message and look at how QEMU runs "
    "here (its -sandbox seccomp filter, its SELinux or AppArmor label, cgroup limits); if the canary ran out of time, "
    "raise postcopy_canary_timeout."
)

# Value ranges the probe (postcopy_facts) and the canary (postcopy_canary) accept.
TARGET_PAGE_SIZE_RANGE = (1024, 1 << 30)
PROBE_TIMEOUT_RANGE = (1, 3600)
CANARY_MEMORY_MB_RANGE = (16, 65536)
CANARY_TIMEOUT_RANGE = (1, 3600)
# The probe's vocabularies, which the role checks and reports against: MEMORY_BACKENDS and
# FEATURE_IDS, read from module_utils on first use (__getattr__ below). Ansible loads every filter
# file of the collection into each worker that runs a task using any of its filters; importing the
# probe's code there would cost each such host and task its compilation.
_VOCABULARIES = {}


def _vocabulary(name):
    if not _VOCABULARIES:
        from ansible_collections.hypervisor.migration.plugins.module_utils import _diagnose, _probe

        _VOCABULARIES["MEMORY_BACKENDS"] = tuple(row.name for row in _probe.MEMORY_BACKENDS)
        _VOCABULARIES["FEATURE_IDS"] = _diagnose.FEATURES + (CANARY_FEATURE,)
    return _VOCABULARIES[name]


def __getattr__(name):
    if name in ("MEMORY_BACKENDS", "FEATURE_IDS"):
        return _vocabulary(name)
    raise AttributeError("module %r has no attribute %r" % (__name__, name))


_GROUP_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*[$]?$")
_SERVICE_NAME = re.compile(r"^[A-Za-z0-9@_.:-]+$")
_REPORT_PATH = re.compile(r".*[^/]\.html$")

# A consumer's directories are its variables named postcopy_<consumer>_..._dir; local_facts' is older.
_NAMED_DIRECTORIES = {"local_facts": ("postcopy_fact_path",)}
_NOVA_PATH_LISTS = ("postcopy_nova_config_files", "postcopy_nova_config_dirs")

_NO_VERDICT = "no verdict in this play: not targeted, limited out or unreachable"
_SIZE_UNITS = ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB"))


# --------------------------------------------------------------------------------------------
# values as Jinja saw them


def _as_int(value):
    """The value as Jinja's int filter reads it: an integer, a number in text, else 0."""
    try:
        return int(value)
    except (TypeError, ValueError):
        try:
            return int(float(value))
        except (TypeError, ValueError, OverflowError):
            return 0


def _json(value):
    return json.dumps(value)


def _is_absolute(path):
    return isinstance(path, str) and path.startswith("/")


def _mapping(value, what):
    if not isinstance(value, Mapping):
        raise AnsibleFilterError("%s: expected a mapping, got %s" % (what, type(value).__name__))
    return value


def _setting(settings, name, default=None):
    """A variable from the mapping a task passes in; unset (or null) gives the default."""
    value = settings.get(name)
    return default if value is None else value


# --------------------------------------------------------------------------------------------
# the checks of the role's variables (what meta/argument_specs.yml cannot express)


def _range_error(settings, name, low_high, unit):
    value = settings[name]
    low, high = low_high
    if low <= _as_int(value) <= high:
        return None
    return "%s must be between %d and %d %s, got %s" % (name, low, high, unit, value)


def _is_page_size(value):
    size = _as_int(value)
    low, high = TARGET_PAGE_SIZE_RANGE
    return low <= size <= high and not size & (size - 1)


def probe_variable_errors(settings):
    """One-line messages for the probe variables' values the argument spec cannot check; [] when all are fine."""
    settings = _mapping(settings, "postcopy_probe_variable_errors")
    errors = []
    if not str(settings["postcopy_probe_user"]).strip():
        errors.append("postcopy_probe_user must be auto, an account name or a numeric uid, got an empty string")
    binary = settings["postcopy_qemu_binary"]
    if binary != "auto" and not _is_absolute(binary):
        errors.append("postcopy_qemu_binary must be auto or an absolute path, got %s" % _json(binary))
    if not _is_page_size(settings["postcopy_target_page_size"]):
        low, high = TARGET_PAGE_SIZE_RANGE
        errors.append("postcopy_target_page_size must be a power of two between %d and %d, got %s" % (low, high, settings["postcopy_target_page_size"]))
    errors.append(_range_error(settings, "postcopy_probe_timeout", PROBE_TIMEOUT_RANGE, "seconds"))
    backends = _setting(settings, "postcopy_memory_backends", [])
    known = _vocabulary("MEMORY_BACKENDS")
    unknown = [name for name in backends if name not in known]
    if not backends or unknown:
        got = ", got %s" % ", ".join(str(name) for name in unknown) if unknown else ""
        errors.append("postcopy_memory_backends must name at least one of %s, and nothing else%s" % (", ".join(known), got))
    return [error for error in errors if error]


def _peer_group_error(settings, groups, host):
    group = settings["postcopy_peer_group"]
    if not group:
        return None
    if group not in groups:
        return "postcopy_peer_group names no inventory group: %s" % _json(group)
    if host not in groups[group]:
        return "postcopy_peer_group %s does not contain this host, %s" % (_json(group), host)
    return None


def _path_errors(settings):
    errors = []
    for name in _NOVA_PATH_LISTS:
        errors.extend("%s must hold absolute paths, got %s" % (name, _json(path)) for path in _setting(settings, name, []) if not _is_absolute(path))
    consumers = _setting(settings, "postcopy_consumers", [])
    for consumer in consumers:
        for name in _consumer_directories(consumer, settings):
            if not _is_absolute(settings[name]):
                errors.append("%s must be an absolute path, got %s" % (name, _json(settings[name])))
    return errors


def _consumer_directories(consumer, settings):
    prefix = "postcopy_%s_" % consumer
    convention = sorted(name for name in settings if name.startswith(prefix) and name.endswith("_dir"))
    return list(_NAMED_DIRECTORIES.get(consumer, ())) + convention


def canary_switch_alias_error(value):
    """Why the deprecated switch postcopy_canary holds no boolean, or None (also when it holds the canary's fact)."""
    if value is None or isinstance(value, Mapping):
        return None
    try:
        boolean(value, strict=True)
    except TypeError:
        return "%s (deprecated, use %s) must be true or false, got %s" % (CANARY_SWITCH_ALIAS, CANARY_SWITCH, _json(value))
    return None


def variable_errors(settings, groups, host):
    """One-line messages for the enablement variables' values the argument spec cannot check; [] when all are fine.

    groups is the inventory's groups variable and host the inventory_hostname, for postcopy_peer_group.
    """
    settings = _mapping(settings, "postcopy_variable_errors")
    groups = _mapping(groups, "postcopy_variable_errors")
    errors = []
    grant_group = settings["postcopy_grant_group"]
    if grant_group and not _GROUP_NAME.match(str(grant_group)):
        errors.append("postcopy_grant_group must be empty or a group name, got %s" % _json(grant_group))
    errors.append(_range_error(settings, "postcopy_canary_memory_mb", CANARY_MEMORY_MB_RANGE, "MiB"))
    errors.append(_range_error(settings, "postcopy_canary_timeout", CANARY_TIMEOUT_RANGE, "seconds"))
    errors.append(canary_switch_alias_error(settings.get(CANARY_SWITCH_ALIAS)))
    errors.append(_peer_group_error(settings, groups, host))
    errors.extend(_path_errors(settings))
    service = settings["postcopy_nova_service"]
    if service and not _SERVICE_NAME.match(str(service)):
        errors.append("postcopy_nova_service must be empty or a service name, got %s" % _json(service))
    report = settings["postcopy_report"]
    if report and not (_is_absolute(report) and _REPORT_PATH.match(report)):
        errors.append("postcopy_report must be empty or an absolute path ending in .html, got %s" % _json(report))
    return [error for error in errors if error]


# --------------------------------------------------------------------------------------------
# the canary switch


def _switch_value(name, value):
    try:
        return boolean(value, strict=True)
    except TypeError:
        raise AnsibleFilterError("%s must be true or false, got %s" % (name, _json(value))) from None


def canary_switch(run_canary, alias=None):
    """Whether the canary runs: the deprecated postcopy_canary where it is set, else postcopy_run_canary.

    A mapping in postcopy_canary is the canary's fact of that name, which Ansible injects as a
    variable (INJECT_FACTS_AS_VARS), not the switch.
    """
    if alias is None or isinstance(alias, Mapping):
        return _switch_value(CANARY_SWITCH, run_canary)
    display.deprecated(
        "The role variable %s is deprecated: set %s instead (the canary's fact has the old name, and hides a switch set in the inventory)"
        % (CANARY_SWITCH_ALIAS, CANARY_SWITCH),
        version=CANARY_SWITCH_ALIAS_REMOVED_IN,
        collection_name=COLLECTION,
    )
    return _switch_value(CANARY_SWITCH_ALIAS, alias)


# --------------------------------------------------------------------------------------------
# the verdict of one host


def _canary_ran(facts, canary_result, run_canary):
    """The canary ran in this role run and reached a result (not check mode's plan)."""
    if not run_canary or not isinstance(canary_result, Mapping) or canary_result.get("skipped"):
        return False
    canary = facts.get("postcopy_canary")
    return isinstance(canary, Mapping) and canary.get("ok") is not None


def canary_cause(probe_user, canary):
    """The cause a failed canary adds: feature canary, cause canary_failed, with QEMU's message."""
    status, error = canary.get("status", "unknown"), canary.get("error") or "no message"
    detail = "The canary migration as %s failed (migration status %s): %s" % (probe_user, status, error)
    return {"feature": CANARY_FEATURE, "cause": CANARY_CAUSE, "detail": detail, "remedy": CANARY_REMEDY}


def _reserved_hugepages(hugepage_sizes):
    return sorted(int(size) for size, counts in (hugepage_sizes or {}).items() if (counts or {}).get("total", 0) > 0)


def _canary_record(ran, canary):
    fields = ("ok", "status", "total_time_ms", "downtime_ms", "error")
    record = dict((field, canary.get(field)) for field in fields)
    record["ran"] = ran
    return record


def verdict(ansible_facts, run_canary=False, canary_result=None, peer_group="", grant_access="none", grant=None):
    """The record of what the probe (and the canary) found on one host, as the role keeps it in __postcopy_verdict."""
    ansible_facts = _mapping(ansible_facts, "postcopy_verdict")
    facts = _mapping(ansible_facts.get("postcopy"), "postcopy_verdict: ansible_facts.postcopy")
    ran = _canary_ran(ansible_facts, canary_result, run_canary)
    canary = ansible_facts["postcopy_canary"] if ran else {}
    failed = ran and not canary["ok"]
    qemu = facts["qemu"]
    return {
        "supported": bool(ansible_facts["postcopy_supported"]) and not failed,
        "missing_features": list(ansible_facts["postcopy_missing_features"]) + ([CANARY_FEATURE] if failed else []),
        "causes": list(facts["causes"]) + ([canary_cause(facts["probe_user"]["name"], canary)] if failed else []),
        "peer_group": peer_group,
        "page_size": facts["page_size"],
        "target_page_size": facts["target_page_size"],
        "hugepages_reserved": _reserved_hugepages(facts["hugepage_sizes"]),
        "memory_backends": facts["memory_backends"],
        "qemu_version": qemu["version"],
        "qemu_binary": qemu["binary"],
        "qemu_uses_device": qemu["uses_device"],
        "access": facts["access"]["used"] if facts["access"] else None,
        "probe_user": facts["probe_user"]["name"],
        "kernel": facts["kernel"],
        "canary": _canary_record(ran, canary),
        "grant": {"method": grant_access, "note": (grant or {}).get("note", "") if grant_access != "none" else ""},
    }


# --------------------------------------------------------------------------------------------
# whether a grant of access applies


def _grant_precondition(method, facts, access_causes, sysctl_value, sysctl_name):
    """Why the method cannot be used on this host at all, or ''."""
    access = facts.get("access") or {}
    device = access.get("device") or {}
    qemu = facts.get("qemu") or {}
    launcher = facts.get("launcher") or {}
    device_path = launcher.get("device_path") or {}
    if method == "device" and not device.get("present"):
        return (
            "postcopy_grant_access=device: this kernel (%s) has no /dev/userfaultfd (it needs 6.1 or newer); nothing was changed. "
            "Use postcopy_grant_access=sysctl, or boot a newer kernel." % facts["kernel"]
        )
    if method == "device" and not qemu.get("uses_device"):
        return (
            "postcopy_grant_access=device: QEMU %s never opens /dev/userfaultfd (QEMU 8.0 and newer do), so granting the device would not "
            "enable post-copy; nothing was changed. Upgrade QEMU to 8.0 or newer, or use postcopy_grant_access=sysctl."
            % (qemu.get("version") or "(version unknown)")
        )
    if method == "device" and device_path.get("libvirt_grants"):
        return (
            "postcopy_grant_access=device: libvirt %s already gives QEMU its own /dev/userfaultfd in each domain's private /dev; "
            "nothing to grant, nothing was changed." % (launcher.get("version") or "(version unknown)")
        )
    if method == "device" and not device_path.get("host_grant_helps"):
        remedy = access_causes[-1]["remedy"] if access_causes else ""
        return (
            "postcopy_grant_access=device: a grant of the host's /dev/userfaultfd cannot reach QEMU here (%s); nothing was changed. %s"
            % (device_path.get("reason"), remedy)
        ).strip()
    if method == "sysctl" and sysctl_value is None:
        return "postcopy_grant_access=sysctl: this kernel has no %s; nothing was changed." % sysctl_name
    return ""


def _grant_in_use(method, facts, sysctl_value):
    """QEMU's account already depends on what the method grants, so a later run must keep it in place."""
    access = facts.get("access") or {}
    if method == "device":
        return access.get("used") == "device" and (access.get("device") or {}).get("owner") != facts["probe_user"]["name"]
    return access.get("used") == "syscall" and not facts["cap_sys_ptrace"] and sysctl_value == 1


def _grant_note(method, ansible_facts, plan, access_causes):
    """Why nothing is granted on this host, or '' when it is, or need not be."""
    if plan["precondition"]:
        return plan["precondition"]
    if plan["applies"] or ansible_facts["postcopy_supported"]:
        return ""
    if plan["root"]:
        return "postcopy_grant_access=%s: QEMU's account is root, so a grant cannot help; nothing was changed." % method
    if plan["cause"] is None:
        return "postcopy_grant_access=%s: QEMU's account already gets a userfaultfd, and a grant cannot fix what is missing (%s); nothing was changed." % (
            method,
            ", ".join(ansible_facts["postcopy_missing_features"]),
        )
    return "postcopy_grant_access=%s cannot fix cause %s; nothing was changed. %s" % (method, plan["cause"], access_causes[0]["remedy"])


def grant_plan(ansible_facts, method, fixes, sysctl_name):
    """Whether postcopy_grant_access=method applies on this host, and what the role says when it does not.

    fixes maps each method to the cause ids a grant by that method can fix; sysctl_name is the
    sysctl the sysctl method sets. Returns {method, applies, note, cause, sysctl_value, changed}.
    """
    ansible_facts = _mapping(ansible_facts, "postcopy_grant_plan")
    facts = _mapping(ansible_facts.get("postcopy"), "postcopy_grant_plan: ansible_facts.postcopy")
    if method not in fixes:
        raise AnsibleFilterError("postcopy_grant_plan: method must be one of %s, got %s" % (", ".join(sorted(fixes)), _json(method)))
    access_causes = [cause for cause in facts["causes"] if cause["feature"] == "userfaultfd"]
    sysctl_value = facts["sysctl"].get(sysctl_name)
    plan = {
        "cause": access_causes[0]["cause"] if access_causes else None,
        "root": facts["probe_user"]["uid"] == 0,
        "precondition": _grant_precondition(method, facts, access_causes, sysctl_value, sysctl_name),
    }
    fixable = plan["cause"] in fixes[method]
    plan["applies"] = not plan["precondition"] and not plan["root"] and (fixable or _grant_in_use(method, facts, sysctl_value))
    return {
        "method": method,
        "applies": plan["applies"],
        "note": _grant_note(method, ansible_facts, plan, access_causes),
        "cause": plan["cause"],
        "sysctl_value": sysctl_value,
        "changed": False,
    }


# --------------------------------------------------------------------------------------------
# peer groups, judged once per play


def size_text(size):
    """A byte count the way the role writes it: 2 MiB, 64 KiB, 1 GiB, 512 B."""
    for unit, name in _SIZE_UNITS:
        if size % unit == 0:
            return "%d %s" % (size // unit, name)
    return "%d B" % size


def _sizes_text(sizes):
    return ", ".join(size_text(size) for size in sizes) if sizes else "none"


def missing_text(one_verdict):
    """The missing features of a verdict, each with its cause ids: userfaultfd (seccomp), canary (canary_failed)."""
    parts = []
    for feature in one_verdict["missing_features"]:
        ids = [cause["cause"] for cause in one_verdict["causes"] if cause["feature"] == feature]
        parts.append("%s (%s)" % (feature, ", ".join(ids)) if ids else feature)
    return ", ".join(parts)


def _recorded_verdict(hostvars, host):
    """The __postcopy_verdict the role recorded for host in this play, or None."""
    try:
        found = hostvars[host].get("__postcopy_verdict")
    except (KeyError, AttributeError):
        return None
    return found if isinstance(found, Mapping) and found else None


def _most_common(counts):
    """The key counted most often; the first counted among equals."""
    return max(counts, key=counts.get)


def _count(counts, key):
    counts[key] = counts.get(key, 0) + 1


def _huge_key(one_verdict):
    return ",".join(str(size) for size in one_verdict["hugepages_reserved"])


def _mismatch_reasons(verdicts, reasons):
    """Add to reasons each member whose page size or reserved huge page sizes differ from most members'."""
    pages, huge = {}, {}
    for one_verdict in verdicts.values():
        _count(pages, str(one_verdict["page_size"]))
        _count(huge, _huge_key(one_verdict))
    common_page, common_huge = _most_common(pages), _most_common(huge)
    common_huge_sizes = [int(size) for size in common_huge.split(",") if size]
    for member, one_verdict in verdicts.items():
        if str(one_verdict["page_size"]) != common_page:
            reasons[member].append(
                "host page size %s differs from %s on most members" % (size_text(_as_int(one_verdict["page_size"])), size_text(_as_int(common_page)))
            )
        if _huge_key(one_verdict) != common_huge:
            reasons[member].append(
                "reserved huge page sizes %s differ from %s on most members" % (_sizes_text(one_verdict["hugepages_reserved"]), _sizes_text(common_huge_sizes))
            )


def judge_group(members, hostvars):
    """{members, ok, held_back_by: [{host, reason}]} for one peer group, from its members' recorded verdicts."""
    reasons = dict((member, []) for member in members)
    verdicts = {}
    for member in members:
        one_verdict = _recorded_verdict(hostvars, member)
        if one_verdict is None:
            reasons[member].append(_NO_VERDICT)
            continue
        verdicts[member] = one_verdict
        if not one_verdict["supported"]:
            reasons[member].append("cannot do post-copy: missing " + missing_text(one_verdict))
    if verdicts:
        _mismatch_reasons(verdicts, reasons)
    held = [{"host": member, "reason": "; ".join(reasons[member])} for member in members if reasons[member]]
    return {"members": list(members), "ok": not held, "held_back_by": held}


def judge_peer_groups(hostvars, play_hosts, groups):
    """Every peer group named by a play host's verdict, judged: {name: {members, ok, held_back_by}}.

    A member without a verdict, one that cannot do post-copy, and one whose host page size or
    reserved huge page sizes differ from most members' hold the group back.
    """
    groups = _mapping(groups, "postcopy_peer_groups")
    if not is_sequence(play_hosts):
        raise AnsibleFilterError("postcopy_peer_groups: expected the list of play hosts, got %s" % type(play_hosts).__name__)
    names = set()
    for host in play_hosts:
        one_verdict = _recorded_verdict(hostvars, host)
        if one_verdict and one_verdict.get("peer_group"):
            names.add(one_verdict["peer_group"])
    return dict((name, judge_group(list(groups.get(name) or []), hostvars)) for name in sorted(names))


# --------------------------------------------------------------------------------------------
# the decision on one host


def _reason(one_verdict, name, group):
    if not one_verdict["supported"]:
        return "QEMU cannot do post-copy here: missing %s." % missing_text(one_verdict)
    if not group["ok"]:
        holders = ", ".join("%s (%s)" % (holder["host"], holder["reason"]) for holder in group["held_back_by"])
        return "QEMU can do post-copy here, but peer group %s is held back by %s." % (name, holders)
    if name:
        return "QEMU can do post-copy here and on every member of peer group %s, with the same page sizes." % name
    return "QEMU can do post-copy here."


def decision(one_verdict, peer_groups):
    """{enabled, held_back_by, reason} for one host, from its verdict and the judged peer groups."""
    one_verdict = _mapping(one_verdict, "postcopy_decision")
    name = one_verdict["peer_group"]
    group = {"ok": True, "held_back_by": []}
    if name:
        try:
            group = _mapping(peer_groups, "postcopy_decision")[name]
        except KeyError:
            raise AnsibleFilterError("postcopy_decision: peer group %s was not judged in this play" % _json(name)) from None
    return {
        "enabled": bool(one_verdict["supported"]) and bool(group["ok"]),
        "held_back_by": list(group["held_back_by"]),
        "reason": _reason(one_verdict, name, group),
    }


# --------------------------------------------------------------------------------------------
# the report


REPORT_TITLE = "Post-copy live migration readiness"
_NO_VERDICT_ROW = "no verdict: the role did not finish probing this host"
# What a row holds where a verdict lacks a field.
_ROW_DEFAULTS = {
    "supported": False,
    "missing_features": [],
    "causes": [],
    "peer_group": "",
    "page_size": None,
    "target_page_size": None,
    "hugepages_reserved": [],
    "memory_backends": [],
    "qemu_version": None,
    "qemu_binary": None,
    "qemu_uses_device": None,
    "access": None,
    "probe_user": None,
    "kernel": None,
    "canary": {"ran": False, "ok": None, "status": None, "total_time_ms": None, "downtime_ms": None, "error": None},
    "grant": {"method": "none", "note": ""},
}
# What the report shows of each consumer's registered result (postcopy_nova_config's, under "nova" for both).
_CONSUMER_FIELDS = (
    ("nova", "__postcopy_nova", ("value", "file", "line", "why", "evaluator", "conflict")),
    ("kolla", "__postcopy_kolla", ("value", "file", "line")),
)


def _host_vars(hostvars, host):
    try:
        found = hostvars[host]
    except KeyError:
        return {}
    return found if isinstance(found, Mapping) else {}


def _consumer_outcome(registered, fields):
    """The fields of a consumer's outcome the report shows, or None where the consumer did not run."""
    outcome = (registered if isinstance(registered, Mapping) else {}).get("nova") or {}
    if "value" not in outcome:
        return None
    return dict((field, outcome[field]) for field in fields if field in outcome)


def _report_row(host, host_vars, one_verdict):
    row = copy.deepcopy(_ROW_DEFAULTS)
    row.update(one_verdict)
    row.update(
        host=host,
        verdict=True,
        enabled=host_vars.get("postcopy_enabled", False),
        held_back_by=host_vars.get("__postcopy_held_back_by", []),
        reason=host_vars.get("__postcopy_reason", ""),
    )
    for name, variable, fields in _CONSUMER_FIELDS:
        row[name] = _consumer_outcome(host_vars.get(variable), fields)
    return row


def report_data(hostvars, play_hosts, feature_ids=None, play_name="", peer_groups=None):
    """The report's data: a summary, the missing features in feature_ids' order (default: the probe's), a row per play host, the peer groups."""
    feature_ids = _vocabulary("FEATURE_IDS") if feature_ids is None else feature_ids
    if not is_sequence(play_hosts) or not is_sequence(feature_ids):
        raise AnsibleFilterError("postcopy_report_data: expected the lists of play hosts and of feature ids")
    rows, missing_anywhere = [], []
    counts = {"hosts": 0, "supported": 0, "enabled": 0, "no_verdict": 0}
    for host in play_hosts:
        host_vars = _host_vars(hostvars, host)
        counts["hosts"] += 1
        one_verdict = host_vars.get("__postcopy_verdict")
        if one_verdict is None:
            counts["no_verdict"] += 1
            rows.append({"host": host, "verdict": False, "supported": None, "enabled": None, "reason": _NO_VERDICT_ROW})
            continue
        row = _report_row(host, host_vars, one_verdict)
        counts["supported"] += 1 if one_verdict.get("supported", False) else 0
        counts["enabled"] += 1 if row["enabled"] else 0
        missing_anywhere.extend(f for f in one_verdict.get("missing_features", []) if f not in missing_anywhere)
        rows.append(row)
    features = [f for f in feature_ids if f in missing_anywhere]
    return {"title": REPORT_TITLE, "play": play_name or "", "summary": counts, "features": features, "hosts": rows, "peer_groups": peer_groups or {}}


class FilterModule(object):
    """hypervisor.migration.postcopy role filters."""

    def filters(self):
        return {
            "postcopy_canary_switch": canary_switch,
            "postcopy_decision": decision,
            "postcopy_grant_plan": grant_plan,
            "postcopy_peer_groups": judge_peer_groups,
            "postcopy_probe_variable_errors": probe_variable_errors,
            "postcopy_report_data": report_data,
            "postcopy_variable_errors": variable_errors,
            "postcopy_verdict": verdict,
        }
