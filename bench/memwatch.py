# -*- coding: utf-8 -*-
# Copyright: hypervisor.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run a command and record the peak memory of its whole process tree.

    python memwatch.py OUT.jsonl -- ansible-playbook ...

Polls /proc (no psutil needed) every INTERVAL seconds and appends one JSON line to OUT:
``controller_peak`` is the peak of the summed RSS of the processes that are Ansible itself
(the top-most ansible-playbook process in the tree and its forked workers, which share its
command line), ``controller_pss_peak`` the same with PSS, which splits the pages the workers share
with ansible-playbook among them instead of counting them once per worker; ``tree_peak`` adds
everything they started (with the local connection: the module processes); ``main_peak`` is the
ansible-playbook process alone. A worker's RSS counts every page it shares with ansible-playbook,
so one worker's own cost is its USS (private pages, sampled with PSS): ``worker_uss_median`` is the
median over the workers of the largest USS each reached (a task that runs once, like a fleet
summary, is one worker among hundreds), ``worker_peak`` the largest RSS any worker reached, and
``controller_processes_at_peak`` how many Ansible processes made up ``controller_peak``: a playbook
whose tasks end sooner has fewer workers alive at once. Exits with the command's status.
"""

import json
import os
import subprocess
import sys
import time

INTERVAL = 0.1
# Proportional set size (shared pages divided among their sharers) costs the kernel a page-table
# walk per read and process: with 50 workers of ~50 MiB each, reading it every 0.5 s took a tenth
# of a core, more for the playbook with more workers alive. Every 2 s: the USS each worker reaches
# is the same on every read after its first second. The watcher's own CPU is in its record.
PSS_EVERY = 20
PAGE = os.sysconf("SC_PAGE_SIZE")


def _children_map():
    parents = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name, "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: fields start after the last ')'.
        fields = stat[stat.rindex(b")") + 2:].split()
        parents.setdefault(int(fields[1]), []).append(int(name))
    return parents


def _tree(root):
    """The pids of root and its descendants, parents before children."""
    parents = _children_map()
    out, todo = [], [root]
    while todo:
        pid = todo.pop(0)
        out.append(pid)
        todo.extend(parents.get(pid, ()))
    return out


def _rss(pid):
    try:
        with open("/proc/%d/statm" % pid, "rb") as handle:
            return int(handle.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def _pss_uss(pid):
    """(PSS, USS) of pid in bytes: its proportional share of every page, and its private pages alone."""
    pss = uss = 0
    try:
        with open("/proc/%d/smaps_rollup" % pid, "rb") as handle:
            for line in handle:
                if line.startswith(b"Pss:"):
                    pss = int(line.split()[1]) * 1024
                elif line.startswith((b"Private_Clean:", b"Private_Dirty:")):
                    uss += int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    return pss, uss


def _cmdline(pid):
    # Not cached: a pid changes its command line when it execs (time, then env, then Ansible).
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            return handle.read()
    except OSError:
        return b""


def _is_ansible(cmdline):
    """ansible-playbook itself (python .../ansible-playbook ...), not time or env on their way to it."""
    parts = cmdline.split(b"\0")
    return any(p.endswith(b"/ansible-playbook") for p in parts[:2]) and not parts[0].endswith((b"/env", b"/time"))


def watch(argv, out_path, interval=INTERVAL):
    start = time.monotonic()
    proc = subprocess.Popen(argv)
    main_cmd = main_pid = None
    peaks = {"controller_peak": 0, "controller_pss_peak": 0, "tree_peak": 0, "main_peak": 0, "worker_peak": 0, "controller_processes_at_peak": 0,
             "samples": 0, "max_processes": 0}
    workers = {}
    while proc.poll() is None:
        pids = _tree(proc.pid)
        if main_cmd is None:
            main_pid = next((pid for pid in pids if _is_ansible(_cmdline(pid))), None)
            if main_pid is not None:
                main_cmd = _cmdline(main_pid)
        controller = tree = pss = processes = 0
        with_pss = peaks["samples"] % PSS_EVERY == 0
        for pid in pids:
            rss = _rss(pid)
            tree += rss
            if _cmdline(pid) == main_cmd:
                controller += rss
                processes += 1
                if pid != main_pid:
                    peaks["worker_peak"] = max(peaks["worker_peak"], rss)
                if with_pss:
                    pid_pss, pid_uss = _pss_uss(pid)
                    pss += pid_pss
                    if pid != main_pid:
                        workers[pid] = max(workers.get(pid, 0), pid_uss)
        if controller > peaks["controller_peak"]:
            peaks["controller_peak"], peaks["controller_processes_at_peak"] = controller, processes
        peaks["controller_pss_peak"] = max(peaks["controller_pss_peak"], pss)
        peaks["tree_peak"] = max(peaks["tree_peak"], tree)
        if main_pid is not None:
            peaks["main_peak"] = max(peaks["main_peak"], _rss(main_pid))
        peaks["max_processes"] = max(peaks["max_processes"], len(pids))
        peaks["samples"] += 1
        time.sleep(interval)
    own = sorted(workers.values())
    peaks["worker_uss_median"] = own[len(own) // 2] if own else 0
    peaks["workers_sampled"] = len(own)
    peaks["wall"] = time.monotonic() - start
    own_cpu = os.times()
    peaks["watcher_cpu"] = own_cpu.user + own_cpu.system
    peaks["rc"] = proc.returncode
    with open(out_path, "a") as handle:
        handle.write(json.dumps(peaks) + "\n")
    return proc.returncode


def main(args):
    if len(args) < 3 or args[1] != "--":
        sys.stderr.write("usage: memwatch.py OUT.jsonl -- COMMAND...\n")
        return 2
    return watch(args[2:], args[0])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
