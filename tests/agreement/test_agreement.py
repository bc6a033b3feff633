# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""QEMU is the judge: for every condition in agreement_conditions.CONDITIONS, our verdict equals QEMU's.

Three checks per condition and accelerator, each under the condition's real host state:

- test_verdict_agrees_with_qemu: postcopy_supported == QEMU accepted migrate-set-capabilities
  postcopy-ram (and QEMU still answers what the table says, so the condition is real);
- test_cause_is_named: where not supported, the missing feature and cause the table expects;
- test_canary_completes_where_qemu_accepts: a real post-copy migration through the
  postcopy_canary module's driver finishes with pages requested through userfaultfd;
- test_canary_fails_where_qemu_refuses: and where QEMU refuses, the canary reports ok: false
  with QEMU's message (not a failed task).
"""

import os

import pytest
from agreement_conditions import ACCEPTS, CONDITIONS, REFUSES
from agreement_harness import CANARY_DRIVER, RESULTS, measure, run_canary


def _params():
    for cond in CONDITIONS:
        for accel in cond.accels:
            marks = [pytest.mark.kvm] if accel == "kvm" else []
            yield pytest.param(cond, accel, id="%s-%s" % (cond.id, accel), marks=marks)


PARAMS = list(_params())


def measured(cond, accel, user):
    """The condition's measurement, taken once per run and shared by the checks below."""
    key = (cond.id, accel)
    if key not in RESULTS["measured"]:
        RESULTS["measured"][key] = measure(cond, user, accel)
    return RESULTS["measured"][key]


def _known_finding(cond, check, differs):
    """A row listed in FINDINGS for this check: expected to differ (xfail), and fails once it agrees."""
    if cond.finding_in != check:
        return
    if differs:
        pytest.xfail("known finding: " + cond.finding)
    pytest.fail("%s is listed in FINDINGS (%s) but now agrees with QEMU: update agreement_conditions.py" % (cond.id, check))


@pytest.mark.parametrize("cond,accel", PARAMS)
def test_verdict_agrees_with_qemu(cond, accel, agreement_user, accel_ready):
    m = measured(cond, accel, agreement_user)
    assert m.qemu == cond.qemu, "condition not reproduced: QEMU %s (%s), the table says %s" % (m.qemu, m.qemu_message, cond.qemu)
    qemu_accepts = m.qemu == ACCEPTS
    disagreeing = [run for run in m.facts if run.supported != qemu_accepts]
    _known_finding(cond, "verdict", bool(disagreeing))
    assert not disagreeing, "DISAGREEMENT: QEMU %s (%s) but the facts say %s" % (
        m.qemu,
        m.qemu_message,
        "; ".join("as %s: supported=%s missing=%s causes=%s" % (r.how, r.supported, r.missing, r.causes) for r in disagreeing),
    )


@pytest.mark.parametrize("cond,accel", [p for p in PARAMS if p.values[0].facts])
def test_cause_is_named(cond, accel, agreement_user, accel_ready):
    m = measured(cond, accel, agreement_user)
    feature, cause = cond.facts.split("/")
    wrong = [run for run in m.facts if not run.missing or run.missing[0] != feature or cause not in [c["cause"] for c in run.causes if c["feature"] == feature]]
    _known_finding(cond, "cause", bool(wrong))
    assert not wrong, "expected %s from %s; got %s" % (feature, cause, "; ".join("as %s: missing=%s causes=%s" % (r.how, r.missing, r.causes) for r in wrong))


def _canary(cond, accel, user):
    if not os.path.exists(CANARY_DRIVER):
        pytest.skip("plugins/module_utils/_canary.py (the postcopy_canary driver) does not exist yet")
    result = run_canary(cond, user, accel)
    RESULTS["canary"][(cond.id, accel)] = result
    assert not result.get("failed"), "the canary could not run: %s" % result.get("msg")
    return result["ansible_facts"]["postcopy_canary"]


@pytest.mark.parametrize("cond,accel", [p for p in PARAMS if p.values[0].qemu == ACCEPTS])
def test_canary_completes_where_qemu_accepts(cond, accel, agreement_user, accel_ready):
    m = measured(cond, accel, agreement_user)
    assert m.qemu == ACCEPTS, "QEMU no longer accepts under this condition: %s" % m.qemu_message
    canary = _canary(cond, accel, agreement_user)
    assert canary["ok"] is True, "QEMU accepted post-copy but the migration did not complete: %s" % canary
    assert canary["status"] == "completed", canary
    assert canary["postcopy_requests"] > 0, "no page was faulted in through userfaultfd: %s" % canary
    assert canary["accel"] == accel, canary


# The canary's guest RAM is always anonymous: a row whose QEMU refuses because of its guest RAM has no canary counterpart.
@pytest.mark.parametrize("cond,accel", [p for p in PARAMS if p.values[0].qemu == REFUSES and p.values[0].guest == "anonymous"])
def test_canary_fails_where_qemu_refuses(cond, accel, agreement_user, accel_ready):
    m = measured(cond, accel, agreement_user)
    assert m.qemu == REFUSES, "QEMU no longer refuses under this condition"
    canary = _canary(cond, accel, agreement_user)
    assert canary["ok"] is False, "QEMU refused post-copy (%s) but the canary migrated: %s" % (m.qemu_message, canary)
    assert canary.get("error"), "the canary failed without QEMU's message: %s" % canary
