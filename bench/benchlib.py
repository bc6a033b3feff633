# -*- coding: utf-8 -*-
# Copyright: hypervisor.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Helpers for bench/bench.py: statistics, hyperfine, the machine description, the table."""

import json
import os
import platform
import random
import shutil
import signal
import subprocess
import time

BOOTSTRAP_SAMPLES = 2000
# Two-sided 95% interval of a bootstrapped ratio of medians.
CI_LOW, CI_HIGH = 0.025, 0.975


# ------------------------------------------------------------------------------------------
# statistics


def median(values):
    data = sorted(values)
    if not data:
        return None
    mid = len(data) // 2
    return data[mid] if len(data) % 2 else (data[mid - 1] + data[mid]) / 2.0


def quantile(values, q):
    data = sorted(values)
    if not data:
        return None
    pos = (len(data) - 1) * q
    low = int(pos)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (pos - low)


def rel_spread(values):
    """Half the inter-quartile range over the median: the relative noise of one set of runs."""
    mid = median(values)
    if not mid:
        return None
    return (quantile(values, 0.75) - quantile(values, 0.25)) / 2.0 / mid


def _resampled_median(rng, values):
    return median([rng.choice(values) for _value in values])


def ratio_interval(ours, base, seed=1):
    """(ratio of medians, low, high): a 95% bootstrap interval, resampling each side's runs."""
    ratio = median(ours) / median(base)
    if len(ours) < 2 or len(base) < 2:
        return ratio, ratio, ratio
    rng = random.Random(seed)
    ratios = []
    for _sample in range(BOOTSTRAP_SAMPLES):
        ratios.append(_resampled_median(rng, ours) / _resampled_median(rng, base))
    return ratio, quantile(ratios, CI_LOW), quantile(ratios, CI_HIGH)


def diff_interval(ours, base, seed=1):
    """(difference of medians, low, high), bootstrapped like ratio_interval."""
    diff = median(ours) - median(base)
    if len(ours) < 2 or len(base) < 2:
        return diff, diff, diff
    rng = random.Random(seed)
    diffs = []
    for _sample in range(BOOTSTRAP_SAMPLES):
        diffs.append(_resampled_median(rng, ours) - _resampled_median(rng, base))
    return diff, quantile(diffs, CI_LOW), quantile(diffs, CI_HIGH)


# ------------------------------------------------------------------------------------------
# hyperfine


def hyperfine_path():
    return shutil.which("hyperfine")


def hyperfine(commands, runs, warmup, export, env=None, prepare=None, log=None):
    """Time each command (a list of argv lists, keyed by label) with hyperfine; {label: [seconds]}.

    Commands run without a shell (hyperfine -N), so the figures carry no shell start-up.
    """
    argv = [hyperfine_path(), "-N", "--style", "none", "--runs", str(runs), "--warmup", str(warmup), "--export-json", export]
    if prepare:
        argv += ["--prepare", prepare]
    labels = []
    for label, cmd in commands:
        labels.append(label)
        argv += ["--command-name", label, _shell_join(cmd)]
    returncode, output = run_group(argv, env)
    if returncode != 0:
        raise BenchError("hyperfine failed (exit %d):\n%s" % (returncode, output.decode("utf-8", "replace")[-4000:]))
    with open(export) as handle:
        data = json.load(handle)
    times = {}
    for result in data["results"]:
        codes = [c for c in result.get("exit_codes", []) if c]
        if codes:
            raise BenchError("%s exited with %s in some runs" % (result["command"], sorted(set(codes))))
        times[result["command"]] = list(result["times"])
    return times


def run_group(argv, env=None):
    """(exit status, output) of argv, run in a process group of its own.

    When the benchmark itself is stopped (a signal, an exception), the whole group goes too: hyperfine
    and the playbook it was timing with every worker and ssh client, so that no session keeps the SSH
    fleet's account busy or its hosts answering after the benchmark has gone.
    """
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        output, _err = proc.communicate()
    except BaseException:
        stop_group(proc)
        raise
    return proc.returncode, output


def stop_group(proc, grace=5.0):
    """SIGTERM to the process group of proc, SIGKILL to what is left of it after ``grace`` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
        # hyperfine is gone; what it started may still be in the group.
        time.sleep(0.5)


def hyperfine_rounds(commands, rounds, runs, warmup, workdir, name, env=None, log=None):
    """Interleave the commands: several hyperfine rounds, the order rotated each round.

    A load change on this shared machine then hits every command, not just the one that
    happened to be running.
    """
    merged = dict((label, []) for label, _cmd in commands)
    if log:
        log("hyperfine: %s, %d rounds of %d run(s) each, interleaved (+%d warm-up)" % (", ".join(merged), rounds, runs, warmup))
    for index in range(rounds):
        shift = index % len(commands)
        order = commands[shift:] + commands[:shift]
        export = os.path.join(workdir, "%s-round%d.json" % (name, index))
        result = hyperfine(order, runs, warmup if index == 0 else 0, export, env=env, log=log)
        for label, times in result.items():
            merged[label].extend(times)
    return merged


def _shell_join(cmd):
    import shlex

    return " ".join(shlex.quote(part) for part in cmd)


class BenchError(Exception):
    """A benchmark command failed: the figures it would give are meaningless."""


# ------------------------------------------------------------------------------------------
# the machine


def _read(path, default=None):
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return default


def cpu_model():
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def meminfo_kib(key):
    """A /proc/meminfo field (MemTotal, MemAvailable, ...) in KiB; 0 when it cannot be read."""
    for line in (_read("/proc/meminfo") or "").splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def loadavg():
    text = _read("/proc/loadavg", "")
    return [float(x) for x in text.split()[:3]] if text else None


def ansible_core_version(python):
    out = subprocess.run([python, "-c", "import ansible.release as r; print(r.__version__)"], stdout=subprocess.PIPE, check=False)
    return out.stdout.decode().strip() or None


def machine_info(python):
    mem_kb = meminfo_kib("MemTotal")
    version = subprocess.run([python, "-c", "import sys; print(sys.version.split()[0])"], stdout=subprocess.PIPE, check=False)
    hf = subprocess.run([hyperfine_path() or "hyperfine", "--version"], stdout=subprocess.PIPE, check=False) if hyperfine_path() else None
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 1048576.0, 1),
        "kernel": platform.release(),
        "python": version.stdout.decode().strip(),
        "ansible_core": ansible_core_version(python),
        "hyperfine": hf.stdout.decode().strip() if hf else None,
        "kvm": os.access("/dev/kvm", os.R_OK | os.W_OK),
        "loadavg_start": loadavg(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


# ------------------------------------------------------------------------------------------
# the table


def fmt_seconds(value):
    if value is None:
        return "-"
    if value < 0.1:
        return "%.2f ms" % (value * 1000.0)
    return "%.3f s" % value


def fmt_mib(value):
    return "-" if value is None else "%.0f MiB" % (value / 1048576.0)


def render_table(rows, markdown=False):
    header = ["figure", "ours", "baseline", "ratio (95% CI)", "goal", "pass", "CPU ratio (95% CI)"]
    body = [[row.get(k, "") or "-" for k in ("figure", "ours", "baseline", "ratio", "goal", "pass", "cpu")] for row in rows]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _name in header) + "|"]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |" for line in body]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip() for line in [header] + body]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_machine(info, markdown=False):
    parts = [
        ("CPU", "%s, %s cores, %s GiB" % (info["cpu"], info["cores"], info["memory_gib"])),
        ("kernel", info["kernel"]),
        ("python", info["python"]),
        ("ansible-core", info["ansible_core"]),
        ("hyperfine", info.get("hyperfine") or "-"),
        ("/dev/kvm", "yes" if info.get("kvm") else "no"),
        ("load average start/end/max", "%s / %s / %s" % (info.get("loadavg_start"), info.get("loadavg_end"), info.get("loadavg_max"))),
        ("mode", info.get("mode", "-")),
        ("started", info.get("started", "-")),
    ]
    if markdown:
        return "\n".join("- %s: %s" % (k, v) for k, v in parts)
    return "\n".join("%-24s %s" % (k + ":", v) for k, v in parts)
