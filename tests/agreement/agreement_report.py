# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The measured agreement table as the RST guide (pytest tests/agreement --agreement-report=docs/docsite/rst/agreement.rst)."""

import platform
import time

from agreement_conditions import ACCEPTS, CONDITIONS, NO_START, describe
from rst_table import inline, list_table

COMMAND = "PYTHONPATH=.build/collections .venv/bin/pytest tests/agreement -p no:cacheprovider --agreement-report=docs/docsite/rst/agreement.rst"

INTRO = """\
.. _ansible_collections.hypervisor.migration.docsite.agreement:

How we know the verdict is right
================================

The fact module reasons about the kernel; QEMU is the final word. So the test suite in
``tests/agreement/`` makes QEMU the judge, one condition at a time, on a real kernel with
Debian's real QEMU:

1. The condition is set up for real: ``vm.unprivileged_userfaultfd``, the mode of
   ``/dev/userfaultfd``, a seccomp filter that makes a system call or one ``UFFDIO_*`` ioctl fail
   with a given errno, capabilities dropped or granted, a user namespace, a tiny open-file
   limit, shared-memory or huge-page guest RAM. Host settings are always put back.
2. QEMU is asked, under that account, filter and wrapper: a destination QEMU
   (``-incoming defer``) gets ``migrate-set-capabilities postcopy-ram on`` over QMP (through the
   ``qemu.qmp`` package, so the judge shares no code with the judged). It answers ``{}`` or
   ``Postcopy is not supported``, with its reason on stderr.
3. ``postcopy_facts`` gathers its facts under exactly the same account, filter and wrapper
   (a test account's rows twice: from root through ``probe_user``, as in production, and as
   the account itself). The suite asserts ``postcopy_supported`` equals QEMU's answer, and that
   the missing feature and cause are the expected ones.
4. Where QEMU accepts, the ``postcopy_canary`` driver (what the module runs) performs a real
   post-copy migration between two QEMUs under the same condition; it must complete with
   pages faulted in through userfaultfd (``postcopy_requests > 0``). Its guest RAM is always anonymous (the canary has no memory
   backend option), so on the shared-memory and huge-page rows it vouches for the account
   and filter, not for the backing. Where QEMU refuses, the canary must say ``ok: false``
   with QEMU's message.

Every row runs under TCG and, where ``/dev/kvm`` works, KVM. A row marked *finding* is one
where we do not agree with QEMU today: the suite keeps it as an expected failure with the
reason, and fails the day it agrees, so that this table is updated.

The table below asks a bare QEMU 7.2. Under libvirt, which decides what QEMU can reach, the suite
asks QEMU 10.0 with libvirt 11.3 and QEMU 7.2 with libvirt 9.0 as well:
:ref:`ansible_collections.hypervisor.migration.docsite.launchers`.
"""


def _qemu_cell(measurements):
    answers = sorted(set((m.qemu, m.qemu_message) for m in measurements))
    cells = []
    for qemu, message in answers:
        if qemu == ACCEPTS:
            cells.append("accepts")
        elif qemu == NO_START:
            cells.append("guest does not start: %s" % _clip(message.split(": ", 1)[-1]))  # after "QEMU exited ... up"
        else:
            cells.append("refuses: %s" % _clip(message))
    return "<br>".join(cells)


def _ms(value):
    return "?" if value is None else "%.0f" % value


def _clip(text, limit=160):
    text = (text or "").replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _facts_cell(measurements):
    runs = [run for m in measurements for run in m.facts]
    verdicts = sorted(set((run.supported, tuple(run.missing), tuple(c["cause"] for c in run.causes)) for run in runs))
    cells = []
    for supported, missing, causes in verdicts:
        if supported:
            cells.append("supported")
        else:
            cells.append("not supported: %s (%s)" % (", ".join(missing), ", ".join(dict.fromkeys(causes))))
    return "<br>".join(cells)


def _cause_ok(cond, run):
    if not cond.facts:
        return True
    feature, cause = cond.facts.split("/")
    return bool(run.missing) and run.missing[0] == feature and cause in [c["cause"] for c in run.causes if c["feature"] == feature]


def _agree_cell(cond, measurements):
    runs = [(m, run) for m in measurements for run in m.facts]
    if not all(run.supported == (m.qemu == ACCEPTS) for m, run in runs):
        return "**no** (finding)"
    if not all(_cause_ok(cond, run) for _m, run in runs):
        return "yes, but not the cause (finding)"
    return "yes"


def _canary_cell(cond, canaries, accels):
    if cond.qemu != ACCEPTS and not any((cond.id, accel) in canaries for accel in accels):
        return "–"
    cells = []
    for accel in accels:
        result = canaries.get((cond.id, accel))
        if result is None:
            cells.append("%s: not run" % accel.upper() if accel in cond.accels else "")
            continue
        canary = (result.get("ansible_facts") or {}).get("postcopy_canary") or {}
        if result.get("failed"):
            cells.append("%s: **could not run** %s" % (accel.upper(), _clip(result.get("msg"), 120)))
        elif cond.qemu == ACCEPTS and canary.get("ok"):
            cells.append(
                "%s: %s, %s page requests, %s ms (wall %s ms)"
                % (accel.upper(), canary.get("status"), canary.get("postcopy_requests"), canary.get("total_time_ms"), _ms(canary.get("wall_time_ms")))
            )
        elif cond.qemu == ACCEPTS:
            cells.append("%s: **FAILED** %s" % (accel.upper(), _clip(canary.get("error"), 120)))
        elif canary.get("ok") is False:
            cells.append("%s: ok: false, %s" % (accel.upper(), _clip(canary.get("error"), 120)))
        else:
            cells.append("%s: **migrated although QEMU refused**" % accel.upper())
    return "<br>".join(c for c in cells if c)


def render(measured, canaries, seconds, kvm):
    """The RST of docs/docsite/rst/agreement.rst from one run's measurements."""
    versions = sorted(set(m.qemu_version for m in measured.values() if m.qemu_version))
    accels = ["tcg", "kvm"] if kvm else ["tcg"]
    lines = [INTRO]
    lines.append(inline(
        "Measured by the suite on %s: QEMU %s (`/usr/bin/qemu-system-x86_64`), kernel %s %s, accelerators %s; "
        "%d conditions, %.0f s. Regenerate with `%s`."
        % (time.strftime("%Y-%m-%d"), ", ".join(versions) or "?", platform.release(), platform.machine(),
           " and ".join(a.upper() for a in accels), len(CONDITIONS), seconds, COMMAND)
    ))
    lines.append("")
    header = ["#", "condition", "set up as", "QEMU says", "postcopy_facts says", "agree", "canary"]
    rows = []
    findings = {}
    for number, cond in enumerate(CONDITIONS, 1):
        ms = [measured[(cond.id, a)] for a in accels if (cond.id, a) in measured]
        if not ms:
            continue
        rows.append(
            [str(number), "`%s`" % cond.id, describe(cond), _qemu_cell(ms), _facts_cell(ms), _agree_cell(cond, ms), _canary_cell(cond, canaries, accels)]
        )
        if cond.finding:
            findings.setdefault(cond.finding, []).append(cond.id)
    lines.append(list_table(header, rows))
    if findings:
        title = "Findings: where we do not agree (yet)"
        lines += ["", title, "-" * len(title), ""]
        lines += [inline("- %s: %s." % (", ".join("`%s`" % i for i in ids), text)) for text, ids in findings.items()]
    lines.append("")
    return "\n".join(lines)
