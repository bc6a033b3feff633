# -*- coding: utf-8 -*-
# Copyright: hypervisor.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The role's prometheus consumer: one host's verdict as a node_exporter textfile-collector file,
in Prometheus' text exposition format (version 0.0.4).

Every series comes from the verdict the role recorded: the missing features and their causes are
the facts' own ids, so a new feature or cause needs no change here."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re
import time

from ansible.errors import AnsibleFilterError

PREFIX = "hypervisor_postcopy_"

# (name without the prefix, help text) of every metric family, in the order the file lists them.
SUPPORTED = ("supported", "Whether QEMU can do post-copy live migration here (1) or not (0), as the probe and the canary found.")
ENABLED = ("enabled", "Whether the role turned post-copy on for this host's consumers (1) or off (0), after peer gating.")
MISSING = ("missing_feature", "A feature post-copy needs that is missing here, with its cause (the probe's ids); absent when supported.")
INFO = ("info", "What the verdict is about: kernel, QEMU version, the account probed, how userfaultfd is reached, peer group.")
TIMESTAMP = (
    "probe_timestamp_seconds",
    "Unix time of the role run whose probe first found the values in this file; kept while later runs find the same.",
)
CANARY_SUCCESS = ("canary_success", "Whether the canary's loopback post-copy migration worked (1) or not (0); absent when it did not run.")
CANARY_DOWNTIME = ("canary_downtime_seconds", "The guest's downtime in the canary migration, as the source QEMU reports it.")
CANARY_DURATION = ("canary_duration_seconds", "The canary migration's total time, as the source QEMU reports it.")

# The sample line of the timestamp, to find an earlier run's value in an existing file.
_TIMESTAMP_SAMPLE = re.compile(r"^%s%s ([0-9]+)$" % (PREFIX, TIMESTAMP[0]), re.MULTILINE)


def escape_label_value(value):
    """A label value as the text format writes it: backslash, double quote and line feed escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text):
    """A HELP text as the text format writes it: backslash and line feed escaped."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value):
    """A sample value: booleans as 1 and 0, numbers as Python writes them (which Prometheus parses)."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return "%d" % value
    if isinstance(value, float):
        return repr(value)
    raise _not_a_number(value)


def _not_a_number(value):
    return AnsibleFilterError("postcopy_prometheus_textfile: a sample value must be a number or a boolean, got %r" % (value,))


def _seconds(milliseconds):
    """Seconds from the milliseconds QEMU reports."""
    if isinstance(milliseconds, bool) or not isinstance(milliseconds, (int, float)):
        raise _not_a_number(milliseconds)
    return milliseconds / 1000.0


def _labels(pairs):
    """{name="value",...} of the pairs in their order; empty values (Prometheus' absent label) left out."""
    shown = ['%s="%s"' % (name, escape_label_value(_text(value))) for name, value in pairs if _text(value)]
    return "{%s}" % ",".join(shown) if shown else ""


def _text(value):
    return "" if value is None else "%s" % (value,)


def _family(family, samples):
    """The HELP and TYPE lines of a gauge family and its samples, given as (label pairs, value)."""
    name = PREFIX + family[0]
    lines = ["# HELP %s %s" % (name, escape_help(family[1])), "# TYPE %s gauge" % name]
    lines.extend("%s%s %s" % (name, _labels(pairs), _number(value)) for pairs, value in samples)
    return lines


def missing_feature_labels(verdict):
    """(feature, cause) label pairs, one per missing feature and cause, in the facts' order.

    A missing feature the causes do not explain still gets its series, without a cause label."""
    seen = []
    for cause in verdict["causes"]:
        key = (cause["feature"], cause["cause"])
        if key not in seen:
            seen.append(key)
    explained = set(feature for feature, _cause in seen)
    seen.extend((feature, None) for feature in verdict["missing_features"] if feature not in explained)
    return [[("feature", feature), ("cause", cause)] for feature, cause in seen]


def _info_labels(verdict):
    return [
        ("kernel", verdict.get("kernel")),
        ("qemu_version", verdict.get("qemu_version")),
        ("probe_user", verdict.get("probe_user")),
        ("access", verdict.get("access")),
        ("peer_group", verdict.get("peer_group")),
    ]


def _canary_lines(canary):
    """The canary's series, only when it ran; the timings only when QEMU reported them."""
    if not canary or not canary.get("ran"):
        return []
    lines = _family(CANARY_SUCCESS, [([], bool(canary.get("ok")))])
    for family, key in ((CANARY_DOWNTIME, "downtime_ms"), (CANARY_DURATION, "total_time_ms")):
        if canary.get(key) is not None:
            lines.extend(_family(family, [([], _seconds(canary[key]))]))
    return lines


def render(verdict, enabled, timestamp):
    """The file's text for one verdict, enablement and timestamp (whole seconds)."""
    lines = _family(SUPPORTED, [([], bool(verdict["supported"]))])
    lines += _family(ENABLED, [([], bool(enabled))])
    lines += _family(MISSING, [(pairs, 1) for pairs in missing_feature_labels(verdict)])
    lines += _family(INFO, [(_info_labels(verdict), 1)])
    lines += _family(TIMESTAMP, [([], int(timestamp))])
    lines += _canary_lines(verdict.get("canary"))
    return "\n".join(lines) + "\n"


def previous_timestamp(previous):
    """The timestamp written in an earlier file's text, None when it has none."""
    found = _TIMESTAMP_SAMPLE.search(previous or "")
    return int(found.group(1)) if found else None


def prometheus_textfile(verdict, enabled, previous="", now=None):
    """The textfile for this verdict. When an earlier file (previous) says the same but for its
    timestamp, it is returned as it is, so a run that finds nothing new changes nothing."""
    if not isinstance(verdict, dict) or not all(key in verdict for key in ("supported", "missing_features", "causes")):
        raise AnsibleFilterError("postcopy_prometheus_textfile: expected the role's verdict (supported, missing_features, causes), got %r" % (verdict,))
    earlier = previous_timestamp(previous)
    if earlier is not None and render(verdict, enabled, earlier) == previous:
        return previous
    return render(verdict, enabled, time.time() if now is None else now)


class FilterModule(object):
    """hypervisor.migration filters of the role's prometheus consumer."""

    def filters(self):
        return {"postcopy_prometheus_textfile": prometheus_textfile}
