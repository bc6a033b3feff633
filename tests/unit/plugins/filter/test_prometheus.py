# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The prometheus consumer's filter: the text it writes, read back by Prometheus' own Python
parser (prometheus_client) and checked by promtool (Debian's prometheus package); the escaping of
label values and help texts; the timestamp kept while nothing else changes.

tests/unit/roles/test_prometheus_consumer.py runs the role itself and scrapes a real node_exporter."""

import shutil
import subprocess

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.hypervisor.migration.plugins.filter import prometheus
from ansible_collections.hypervisor.migration.plugins.module_utils._diagnose import CAUSES, FEATURES
from prometheus_client.parser import text_string_to_metric_families

NOW = 1796000000


def verdict(causes=(), missing=None, canary=None, **extra):
    """A verdict shaped like the one roles/postcopy/tasks/verdict.yml records."""
    causes = [dict(feature=f, cause=c, detail="detail of %s" % c, remedy="remedy of %s" % c) for f, c in causes]
    record = {
        "supported": not causes and not missing,
        "missing_features": list(missing if missing is not None else dict.fromkeys(c["feature"] for c in causes)),
        "causes": causes,
        "peer_group": "",
        "kernel": "6.18.0",
        "qemu_version": "7.2.22",
        "probe_user": "libvirt-qemu",
        "access": "syscall",
        "canary": canary or {"ran": False, "ok": None, "downtime_ms": None, "total_time_ms": None},
    }
    record.update(extra)
    return record


def samples(text):
    """{(name, sorted label pairs): value} as Prometheus' Python client parses the text."""
    found = {}
    for family in text_string_to_metric_families(text):
        assert family.type == "gauge", family
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def help_texts(text):
    return dict((family.name, family.documentation) for family in text_string_to_metric_families(text))


def test_a_supported_host():
    text = prometheus.prometheus_textfile(verdict(), True, now=NOW)
    info = (("access", "syscall"), ("kernel", "6.18.0"), ("probe_user", "libvirt-qemu"), ("qemu_version", "7.2.22"))
    assert samples(text) == {
        ("hypervisor_postcopy_supported", ()): 1.0,
        ("hypervisor_postcopy_enabled", ()): 1.0,
        ("hypervisor_postcopy_info", info): 1.0,
        ("hypervisor_postcopy_probe_timestamp_seconds", ()): NOW,
    }
    assert text.endswith("\n") and not text.endswith("\n\n")
    # The family of the missing features is declared even when it has no series.
    assert "# TYPE hypervisor_postcopy_missing_feature gauge\n" in text


def test_one_series_per_missing_feature_and_cause():
    causes = [("userfaultfd", "unprivileged_userfaultfd_sysctl"), ("userfaultfd", "seccomp"), ("missing_shmem", "kernel_config")]
    # target_page_size is missing without a cause in the list: its series has no cause label.
    text = prometheus.prometheus_textfile(verdict(causes + causes[:1], missing=["userfaultfd", "missing_shmem", "target_page_size"]), False, now=NOW)
    found = samples(text)
    missing = sorted(labels for (name, labels) in found if name == "hypervisor_postcopy_missing_feature")
    assert missing == sorted([(("cause", c), ("feature", f)) for f, c in causes] + [(("feature", "target_page_size"),)])
    assert found[("hypervisor_postcopy_supported", ())] == 0.0
    assert found[("hypervisor_postcopy_enabled", ())] == 0.0


def test_supported_but_held_back_by_its_peer_group():
    found = samples(prometheus.prometheus_textfile(verdict(peer_group="rack1"), False, now=NOW))
    assert found[("hypervisor_postcopy_supported", ())] == 1.0
    assert found[("hypervisor_postcopy_enabled", ())] == 0.0
    (info,) = [labels for name, labels in found if name == "hypervisor_postcopy_info"]
    assert ("peer_group", "rack1") in info


def test_every_feature_and_cause_id_is_a_valid_label_value_as_it_is():
    # The ids of the facts go into the file unchanged, whichever they are.
    causes = list(zip(FEATURES, CAUSES * 2))
    found = samples(prometheus.prometheus_textfile(verdict(causes), False, now=NOW))
    labels = [dict(labels) for name, labels in found if name == "hypervisor_postcopy_missing_feature"]
    assert sorted((d["feature"], d["cause"]) for d in labels) == sorted(causes)


def test_canary_series_only_when_it_ran():
    ran = {"ran": True, "ok": True, "downtime_ms": 7, "total_time_ms": 438}
    found = samples(prometheus.prometheus_textfile(verdict(canary=ran), True, now=NOW))
    assert found[("hypervisor_postcopy_canary_success", ())] == 1.0
    assert found[("hypervisor_postcopy_canary_downtime_seconds", ())] == pytest.approx(0.007)
    assert found[("hypervisor_postcopy_canary_duration_seconds", ())] == pytest.approx(0.438)

    failed = {"ran": True, "ok": False, "downtime_ms": None, "total_time_ms": None}
    found = samples(prometheus.prometheus_textfile(verdict([("canary", "canary_failed")], canary=failed), False, now=NOW))
    assert found[("hypervisor_postcopy_canary_success", ())] == 0.0
    assert not [name for name, _labels in found if "downtime" in name or "duration" in name]

    found = samples(prometheus.prometheus_textfile(verdict(), True, now=NOW))
    assert not [name for name, _labels in found if "canary" in name]


@pytest.mark.parametrize(
    "value, written",
    [
        ('qemu "patched"', r"qemu \"patched\""),
        ("C:\\qemu", r"C:\\qemu"),
        ("two\nlines", r"two\nlines"),
        ('\\"\n', r"\\\"\n"),
        ("ünïcode, {braces} = and,commas", "ünïcode, {braces} = and,commas"),
    ],
)
def test_label_values_are_escaped(value, written):
    assert prometheus.escape_label_value(value) == written
    text = prometheus.prometheus_textfile(verdict(kernel=value), True, now=NOW)
    assert 'kernel="%s"' % written in text
    (info,) = [dict(labels) for name, labels in samples(text) if name == "hypervisor_postcopy_info"]
    assert info["kernel"] == value


def test_help_texts_are_escaped():
    assert prometheus.escape_help('a\\b\nc "d"') == 'a\\\\b\\nc "d"'
    text = prometheus.prometheus_textfile(verdict(), True, now=NOW)
    assert help_texts(text)["hypervisor_postcopy_supported"] == prometheus.SUPPORTED[1]


def test_an_unchanged_verdict_keeps_the_earlier_file():
    first = prometheus.prometheus_textfile(verdict(), True, now=NOW)
    assert prometheus.prometheus_textfile(verdict(), True, previous=first, now=NOW + 3600) == first
    assert prometheus.previous_timestamp(first) == NOW
    # Anything else that changed brings the new time.
    changed = prometheus.prometheus_textfile(verdict(kernel="6.19.0"), True, previous=first, now=NOW + 3600)
    assert prometheus.previous_timestamp(changed) == NOW + 3600
    assert prometheus.previous_timestamp(prometheus.prometheus_textfile(verdict(), False, previous=first, now=NOW + 1)) == NOW + 1
    # An earlier file written otherwise (edited, or by another version) is replaced.
    edited = first.replace("# HELP hypervisor_postcopy_enabled", "# HELP hypervisor_postcopy_enabled edited")
    assert prometheus.prometheus_textfile(verdict(), True, previous=edited, now=NOW + 2) != edited
    assert prometheus.previous_timestamp("") is None
    assert prometheus.previous_timestamp("hypervisor_postcopy_probe_timestamp_seconds x\n") is None


def test_without_now_the_time_is_the_clock(monkeypatch):
    monkeypatch.setattr(prometheus.time, "time", lambda: 1800000000.75)
    assert prometheus.previous_timestamp(prometheus.prometheus_textfile(verdict(), True)) == 1800000000


@pytest.mark.parametrize("bad", [None, "supported", {"supported": True}, ["causes"]])
def test_anything_but_a_verdict_is_a_one_line_error(bad):
    with pytest.raises(AnsibleFilterError, match="^postcopy_prometheus_textfile: expected the role's verdict"):
        prometheus.prometheus_textfile(bad, True)


def test_a_value_that_is_not_a_number_is_a_one_line_error():
    with pytest.raises(AnsibleFilterError, match="^postcopy_prometheus_textfile: a sample value must be a number"):
        prometheus.prometheus_textfile(verdict(canary={"ran": True, "ok": True, "downtime_ms": "7", "total_time_ms": None}), True)


def test_promtool_accepts_every_shape(tmp_path):
    promtool = shutil.which("promtool")
    if not promtool:
        pytest.skip("promtool not found (Debian package prometheus; ./dev.sh setup installs it)")
    shapes = [
        verdict(),
        verdict([("userfaultfd", "seccomp"), ("userfaultfd", "lsm")], peer_group='rack "1"\n'),
        verdict([("canary", "canary_failed")], canary={"ran": True, "ok": False, "downtime_ms": None, "total_time_ms": 60000}),
        verdict(canary={"ran": True, "ok": True, "downtime_ms": 3, "total_time_ms": 512}, access=None, qemu_version=None),
    ]
    for shape in shapes:
        text = prometheus.prometheus_textfile(shape, shape["supported"], now=NOW)
        proc = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr + text
        assert proc.stdout + proc.stderr == ""
