# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""How bench/ judges a ratio: CI fails only on a miss beyond the noise the run measured."""

import os
import subprocess
import sys
import time

import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
sys.path.insert(0, os.path.join(REPO, "bench"))

import bench  # noqa: E402
import benchlib  # noqa: E402

BASE = [1.00, 1.02, 0.98, 1.01, 0.99, 1.00]


def scaled(factor, spread=0.0):
    return [v * factor * (1 + spread * ((-1) ** i) * (i % 3)) for i, v in enumerate(BASE)]


def judged(ours, goal=1.10, **kwargs):
    return bench.ratio_row("figure", ours, BASE, goal, **kwargs)


def test_a_ratio_under_its_goal_passes():
    row = judged(scaled(1.05))
    assert (row["status"], row["pass"]) == ("pass", "yes")
    assert bench.exit_status([row]) == 0


def test_a_miss_inside_the_measured_noise_does_not_fail():
    row = judged(scaled(1.12, spread=0.08))
    ratio, low, _high = benchlib.ratio_interval(scaled(1.12, spread=0.08), BASE)
    assert ratio > 1.10 >= low
    assert row["status"] == "noise"
    assert bench.exit_status([row]) == 0


def test_a_miss_beyond_the_noise_fails_the_run():
    row = judged(scaled(1.30))
    assert (row["status"], row["pass"]) == ("fail", "NO")
    assert bench.exit_status([row]) == 1


def test_an_informational_miss_never_fails_the_run():
    assert bench.exit_status([judged(scaled(1.30), gating=False)]) == 0


@pytest.mark.parametrize("factor, status, code", [(2.0, "known", 0), (4.0, "fail", 1)])
def test_an_unreachable_goal_fails_only_over_its_ceiling(factor, status, code):
    row = judged(scaled(factor), known_miss=(3.5, "why"))
    assert row["status"] == status
    assert bench.exit_status([row]) == code


def test_strict_holds_an_unreachable_goal_to_the_goal(monkeypatch):
    monkeypatch.setitem(bench.OPTIONS, "strict", True)
    assert judged(scaled(2.0), known_miss=(3.5, "why"))["status"] == "fail"


def test_only_the_listed_goals_are_excused():
    # Every other goal is held to its goal, the SSH fleet's time too (measured 1.066, 1.066 and 1.103 at 50, 200
    # and 1,000 hosts); an entry here needs its reason in docs/docsite/rst/performance.rst.
    assert sorted(bench.UNREACHABLE) == ["adhoc_root", "facts_modules", "fleet_ssh_memory"]
    # Measured 1.17-1.27 in CI since the launcher model added module_utils the payload build parses.
    assert bench.UNREACHABLE["adhoc_root"][0] <= 1.35
    assert bench.UNREACHABLE["facts_modules"][0] < 4
    # Measured 1.23 and 1.28 at 200 and 1,000 hosts with every fork busy.
    assert bench.UNREACHABLE["fleet_ssh_memory"][0] <= 1.35


def test_async_job_files_stay_in_the_workdir(tmp_path):
    # gather_facts with two fact modules runs them as async jobs (the facts_modules figure); their
    # job files must not pile up in the home directory of whoever runs bench.
    home = tmp_path / "home"
    home.mkdir()
    ctx = bench.Context("quick", str(tmp_path))
    env = dict(ctx.env, HOME=str(home))
    argv = ctx.adhoc("ansible.builtin.gather_facts") + ["-e", '{"ansible_facts_modules": ["ansible.builtin.setup", "ansible.builtin.ping"]}']
    ctx.run(argv, env=env)
    assert not (home / ".ansible_async").exists()
    assert os.listdir(os.path.join(str(tmp_path), "async"))


def test_the_quick_run_leaves_out_the_full_only_figures():
    quick = [name for name, _func in bench.selected_figures("quick", set())]
    full = [name for name, _func in bench.selected_figures("full", set())]
    assert "fleet_mitogen" in full and "fleet_mitogen" not in quick
    assert set(full) - set(quick) == bench.FULL_ONLY
    # Named with --only, it runs in a quick run too.
    assert [name for name, _func in bench.selected_figures("quick", {"fleet_mitogen"})] == ["fleet_mitogen"]


def test_a_mitogen_fleet_that_does_not_fit_in_memory_is_not_started(monkeypatch):
    memory = {"MemTotal": 24 << 20, "MemAvailable": 20 << 20}
    monkeypatch.setattr(bench.benchlib, "meminfo_kib", lambda key: memory[key])
    assert bench.mitogen_memory_shortfall(50) is None
    why = bench.mitogen_memory_shortfall(1000)
    assert why.startswith("not started:") and "1000 hosts need about 68.4 GiB" in why and "14.0 GiB is available" in why


def test_an_engine_that_refuses_is_reported_with_its_error_and_does_not_fail_the_run(tmp_path):
    ctx = bench.Context("quick", str(tmp_path))
    commands = [("ping", ["true"]), ("ours", ["sh", "-c", "echo 'fatal: [ssh0001]: FAILED! => {\"msg\": \"boom\"}'; echo ok=0; exit 2"])]
    label, error = bench._which_failed(ctx, commands, ctx.env)
    assert (label, error) == ("ours", 'fatal: [ssh0001]: FAILED! => {"msg": "boom"}')
    row = bench.refused_row("fleet over SSH, Mitogen", "<= 1.10", error)
    assert row["status"] == "refused" and "boom" in row["note"]
    assert bench.exit_status([row]) == 0


def test_a_fleet_without_the_module_alone_has_only_the_rows_against_ping(tmp_path):
    ctx = bench.Context("full", str(tmp_path))
    assert [label for label, _argv in bench._ssh_playbooks(ctx, None)] == ["ping", "module", "ours"]
    ctx.size = dict(ctx.size, ssh_module=False)
    assert [label for label, _argv in bench._ssh_playbooks(ctx, None)] == ["ping", "ours"]
    times = {"ping": BASE, "ours": scaled(1.05)}
    rows = bench._ssh_rows("fleet over SSH", "2 hosts", "fleet_ssh", times, memory(), times)
    assert [row["figure"].strip() for row in rows] == [
        "fleet over SSH (2 hosts)",
        "peak controller memory, preflight / ping (ansible-playbook + its workers, summed RSS)",
        "controller memory with all 50 forks busy, preflight / ping (ansible-playbook + 50 x a worker's own pages)",
    ]


def memory(ours_alive=51, ping_alive=40, ours_worker=46, ping_worker=45):
    """memwatch records (MiB) of three runs of each playbook: same-sized workers, more of ours alive at the peak."""
    def record(alive, worker):
        return {"controller_peak": (60 + (alive - 1) * worker) << 20, "controller_processes_at_peak": alive, "main_peak": 60 << 20,
                "worker_uss_median": worker << 20, "worker_peak": 100 << 20}
    return {"ours": [record(ours_alive, ours_worker)] * 3, "ping": [record(ping_alive, ping_worker)] * 3}


def test_controller_memory_is_gated_with_every_fork_busy():
    # The measured peak counts the workers alive at the time: more of ours when our task lasts longer.
    peak, busy = bench._memory_rows(memory(), "ours", "ping", "ping")
    assert peak["gating"] is False and peak["values"]["ratio"] > 1.2 and "51 (preflight), 40 (ping)" in peak["note"]
    assert busy["gating"] is True and busy["status"] == "pass" and round(busy["values"]["ratio"], 3) == round((60 + 50 * 46) / (60 + 50 * 45.0), 3)
    # A worker that grows counts: a fifth larger is a miss excused up to the ceiling, a half larger fails.
    _peak, busy = bench._memory_rows(memory(ours_worker=55), "ours", "ping", "ping")
    assert busy["status"] == "known"
    _peak, busy = bench._memory_rows(memory(ours_worker=70), "ours", "ping", "ping")
    assert busy["status"] == "fail"


def test_stopping_a_benchmark_command_stops_everything_it_started():
    # As hyperfine starts a playbook that starts workers and ssh clients: a child with a grandchild.
    proc = subprocess.Popen(["sh", "-c", "sleep 300 & sleep 300"], start_new_session=True)
    time.sleep(0.3)
    assert len(running_in_group(proc.pid)) == 3
    benchlib.stop_group(proc)
    assert running_in_group(proc.pid) == []


def running_in_group(pgid):
    """The processes of a process group that still run (an orphan's zombie waits for whoever reaps it)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open("/proc/%s/stat" % pid) as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(pid))
    return found


def test_a_benchmark_command_that_fails_gives_its_status_and_output():
    assert benchlib.run_group(["sh", "-c", "echo out; echo err >&2; exit 3"]) == (3, b"out\nerr\n")


def test_two_runs_never_share_a_work_directory(tmp_path):
    workdir = str(tmp_path / "work-full")
    assert bench.claim_workdir(workdir)
    claim = "import sys; sys.path.insert(0, %r); import bench; sys.exit(0 if bench.claim_workdir(%r) else 3)"
    other = subprocess.run([sys.executable, "-c", claim % (os.path.join(REPO, "bench"), workdir)], check=False)
    assert other.returncode == 3
