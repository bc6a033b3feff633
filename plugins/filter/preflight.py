# -*- coding: utf-8 -*-
# Copyright: hypervisor.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters behind the hypervisor.migration.preflight playbook: the module arguments taken from
variables, one line per host, the fleet summary, and the hosts that fail the run.

The playbook hands the registered results of every host to one task that runs once: a task per
host costs Ansible a worker process per host, which at a thousand hosts is most of the run."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ast
import os

from ansible.errors import AnsibleFilterError

# postcopy_facts' argument spec, read, not imported: importing it would load every module_utils the
# probe uses (cffi among them) into each Ansible worker process that templates the probe's arguments.
_MODULE_SOURCE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "module_utils", "_facts.py")
_OPTIONS = []

# The variable that sets each module option: postcopy_<option>, as in the role, whose timeout
# variable says which timeout it is.
_VARIABLE_NAMES = {"timeout": "postcopy_probe_timeout"}
# Hosts named in a summary line per category; a fleet of 1,000 would otherwise drown it.
_NAMES_SHOWN = 10

# Outcomes of the probe on one host, in the order the summary shows them.
SUPPORTED = "supported"
NOT_SUPPORTED = "not_supported"
WRONG_ACCOUNT = "wrong_account"
UNREACHABLE = "unreachable"
FAILED = "failed"
OUTCOMES = (SUPPORTED, NOT_SUPPORTED, WRONG_ACCOUNT, UNREACHABLE, FAILED)


def _spec_options(source):
    """The option names of ``ARGUMENT_SPEC = dict(name=..., ...)`` in a module's source."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["ARGUMENT_SPEC"]:
            return sorted(keyword.arg for keyword in node.value.keywords)
    raise AnsibleFilterError("postcopy_preflight_args: no ARGUMENT_SPEC = dict(...) in %s" % _MODULE_SOURCE)


def module_options():
    """The postcopy_facts options, from its argument spec (read once per process)."""
    if not _OPTIONS:
        with open(_MODULE_SOURCE) as source:
            _OPTIONS.extend(_spec_options(source.read()))
    return list(_OPTIONS)


def option_variables():
    """Every postcopy_facts option and the variable that sets it."""
    return dict((option, _VARIABLE_NAMES.get(option, "postcopy_" + option)) for option in module_options())


def preflight_args(host_vars):
    """The postcopy_facts arguments set by the host's variables; the module's defaults for the rest."""
    return dict((option, host_vars[name]) for option, name in option_variables().items() if name in host_vars)


def _as_mapping(result, what):
    if not isinstance(result, dict):
        raise AnsibleFilterError("%s: expected the registered result of postcopy_facts, got %s" % (what, type(result).__name__))
    return result


def outcome(result):
    """SUPPORTED, NOT_SUPPORTED, WRONG_ACCOUNT (the verdict is not QEMU's account's), UNREACHABLE or FAILED."""
    result = _as_mapping(result, "postcopy_preflight_outcome")
    if result.get("unreachable"):
        return UNREACHABLE
    facts = result.get("ansible_facts") or {}
    if result.get("failed") or "postcopy" not in facts:
        return FAILED
    who = facts["postcopy"]["probe_user"]
    if who.get("qemu_account") not in (None, who["name"]):
        return WRONG_ACCOUNT
    return SUPPORTED if facts["postcopy_supported"] else NOT_SUPPORTED


def _subject(details):
    who = details["probe_user"]
    whose = "" if who.get("qemu_account") else "; no QEMU account found, so this is the verdict for the module's own account"
    # Imported here: the per-host argument filter must not load module_utils in every worker.
    from ansible_collections.hypervisor.migration.plugins.module_utils._launcher import describe_launcher

    qemu = (details.get("qemu") or {}).get("version")
    # Who starts QEMU decides how it gets userfaultfd: "libvirt 11.3, QEMU 10.0, device via libvirt's private /dev".
    started = describe_launcher(details["launcher"], qemu) if details.get("launcher") else "QEMU %s" % (qemu or "unknown")
    return "%s (uid %s%s), %s, kernel %s" % (who["name"], who["uid"], whose, started, details["kernel"])


def _causes(details):
    return " | ".join("%s missing, cause %s: %s" % (c["feature"], c["cause"], c["remedy"]) for c in details["causes"])


def _message(result):
    return " ".join(str(result.get("msg") or "no message").split())


def preflight_line(result):
    """The line the preflight prints for one host's registered postcopy_facts result."""
    kind = outcome(result)
    if kind == UNREACHABLE:
        return "UNREACHABLE: %s" % _message(result)
    if kind == FAILED:
        return "FAILED: %s" % _message(result)
    details = result["ansible_facts"]["postcopy"]
    if kind == WRONG_ACCOUNT:
        who = details["probe_user"]
        return "NOT JUDGED: probed as %s, not as QEMU's account %s: run with --become" % (who["name"], who["qemu_account"])
    if kind == SUPPORTED:
        used = (details.get("access") or {}).get("used")
        return "SUPPORTED: post-copy works for %s, userfaultfd via %s" % (_subject(details), used)
    return "NOT SUPPORTED for %s: %s" % (_subject(details), _causes(details))


def preflight_fails(result, require=False):
    """Whether the host fails the run: it did not answer, or (require) QEMU cannot do post-copy there."""
    kind = outcome(result)
    return kind in (UNREACHABLE, FAILED) or (bool(require) and kind != SUPPORTED)


def _names(hosts):
    shown = ", ".join(hosts[:_NAMES_SHOWN])
    more = len(hosts) - _NAMES_SHOWN
    return shown + (" and %d more" % more if more > 0 else "")


def preflight_summary(results):
    """Counts over {host: registered result}: hosts per outcome, and not supported hosts per cause.

    A host without a result (it never reached the probe) counts as failed.
    """
    results = _checked_results(results, "postcopy_preflight_summary")
    hosts = dict((kind, []) for kind in OUTCOMES)
    causes = {}
    for host in sorted(results):
        result = results[host]
        kind = outcome(result) if result else FAILED
        hosts[kind].append(host)
        if kind == NOT_SUPPORTED:
            for cause in sorted(set(c["cause"] for c in result["ansible_facts"]["postcopy"]["causes"])):
                causes[cause] = causes.get(cause, 0) + 1
    return {"hosts": len(results), "counts": dict((k, len(v)) for k, v in hosts.items()), "causes": causes, "names": hosts}


def preflight_summary_line(summary):
    """One line: how many hosts answered supported, not supported (by cause), and which did not."""
    counts, names = summary["counts"], summary["names"]
    by_cause = ", ".join("%s %d" % item for item in sorted(summary["causes"].items()))
    parts = [
        "%d supported" % counts[SUPPORTED],
        "%d not supported%s" % (counts[NOT_SUPPORTED], " (%s)" % by_cause if by_cause else ""),
    ]
    labels = ((WRONG_ACCOUNT, "not probed as QEMU's account"), (UNREACHABLE, "unreachable"), (FAILED, "failed"))
    parts.extend("%d %s%s" % (counts[kind], label, " (%s)" % _names(names[kind]) if names[kind] else "") for kind, label in labels)
    return "%d host%s: %s" % (summary["hosts"], "" if summary["hosts"] == 1 else "s", ", ".join(parts))


def _checked_results(results, what):
    if not isinstance(results, dict):
        raise AnsibleFilterError("%s: expected a mapping of host to result, got %s" % (what, type(results).__name__))
    return results


def preflight_lines(results):
    """One line per host ("host: line"), in host name order, then the summary line."""
    results = _checked_results(results, "postcopy_preflight_lines")
    lines = ["%s: %s" % (host, preflight_line(results[host] or {"failed": True, "msg": "no result"})) for host in sorted(results)]
    return lines + [preflight_summary_line(preflight_summary(results))]


def preflight_failing(results, require=False):
    """The hosts that fail the run, in host name order (a host without a result among them)."""
    results = _checked_results(results, "postcopy_preflight_failing")
    return [host for host in sorted(results) if not results[host] or preflight_fails(results[host], require)]


def preflight_fleet(results, require=False):
    """The lines (one per host, then the summary) and the hosts that fail the run, from one pass."""
    return {"lines": preflight_lines(results), "failing": preflight_failing(results, require)}


class FilterModule(object):
    """hypervisor.migration preflight filters."""

    def filters(self):
        return {
            "postcopy_preflight_args": preflight_args,
            "postcopy_preflight_line": preflight_line,
            "postcopy_preflight_failing": preflight_failing,
            "postcopy_preflight_fleet": preflight_fleet,
            "postcopy_preflight_lines": preflight_lines,
            "postcopy_preflight_outcome": outcome,
            "postcopy_preflight_summary": preflight_summary,
            "postcopy_preflight_summary_line": preflight_summary_line,
        }
