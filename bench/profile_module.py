# -*- coding: utf-8 -*-
# Copyright: hypervisor.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where a postcopy_facts run spends its time, next to ansible.builtin.ping (docs/docsite/rst/performance.rst).

    bench/run --profile        (or: .venv/bin/python bench/profile_module.py, in ./dev.sh shell)

1. Has Ansible build the real AnsiballZ payloads (ANSIBLE_KEEP_REMOTE_FILES) for ping and for
   postcopy_facts with each backend and account, and times each payload alone with hyperfine:
   wall and CPU of the module process, without the controller.
2. Runs the postcopy_facts payload under cProfile, exploded, and lists the costliest calls.
3. Times the imports the module adds (python -X importtime).
"""

import glob
import io
import json
import os
import pstats
import shutil
import subprocess
import sys
import tempfile

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
COLLECTIONS = os.path.join(REPO, ".build", "collections")
PYTHON = os.path.join(REPO, ".venv", "bin", "python")
TEST_USER = os.environ.get("HVM_TEST_USER", "hvm-probe-test")
FQN = "ansible_collections.hypervisor.migration.plugins.modules.postcopy_facts"


def _env(keep_dir):
    env = dict(os.environ)
    env.update({
        "PATH": os.path.dirname(PYTHON) + os.pathsep + env.get("PATH", ""),
        "ANSIBLE_COLLECTIONS_PATH": COLLECTIONS,
        "ANSIBLE_KEEP_REMOTE_FILES": "1",
        "ANSIBLE_REMOTE_TMP": keep_dir,
        "ANSIBLE_LOCAL_TEMP": os.path.join(keep_dir, "local"),
        "ANSIBLE_NOCOLOR": "1",
    })
    return env


def build_payload(keep_dir, module, args):
    """Run the module once ad hoc with its payload kept; the payload's path."""
    before = set(glob.glob(os.path.join(keep_dir, "ansible-tmp-*")))
    argv = [os.path.join(os.path.dirname(PYTHON), "ansible"), "localhost", "-i", "localhost,", "-c", "local",
            "-e", "ansible_python_interpreter=%s" % PYTHON, "-m", module]
    if args:
        argv += ["-a", args]
    subprocess.run(argv, env=_env(keep_dir), stdout=subprocess.DEVNULL, check=True)
    new = sorted(set(glob.glob(os.path.join(keep_dir, "ansible-tmp-*"))) - before)
    return glob.glob(os.path.join(new[-1], "AnsiballZ_*.py"))[0]


def time_payloads(payloads, workdir, runs):
    export = os.path.join(workdir, "payloads.json")
    argv = ["hyperfine", "-N", "--style", "none", "--warmup", "3", "--runs", str(runs), "--export-json", export]
    for label, path in payloads:
        argv += ["--command-name", label, "%s %s" % (PYTHON, path)]
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    with open(export) as handle:
        results = json.load(handle)["results"]
    base = None
    print("module process alone (%d runs each): median wall, mean CPU (user+sys), CPU over ping's" % runs)
    for res in results:
        cpu = res["user"] + res["system"]
        base = base or cpu
        print("  %-44s %7.1f ms  %7.1f ms  %+7.1f ms" % (res["command"], res["median"] * 1000, cpu * 1000, (cpu - base) * 1000))


def profile_payload(path, limit):
    """cProfile of the exploded payload run in this process; the rows that are our code or cost most."""
    subprocess.run([PYTHON, path, "explode"], check=True, stdout=subprocess.DEVNULL)
    debug_dir = os.path.join(os.path.dirname(path), "debug_dir")
    with open(os.path.join(debug_dir, "args"), "rb") as handle:
        params = handle.read()
    code = (
        "import cProfile, io, sys\n"
        "sys.path.insert(0, %r)\n"
        "prof = cProfile.Profile()\n"
        "out, sys.stdout = sys.stdout, io.StringIO()\n"
        "prof.enable()\n"
        "try:\n"
        "    from ansible.module_utils._internal._ansiballz import _loader\n"
        "    _loader.run_module(json_params=%r, profile='legacy', module_fqn=%r, modlib_path=%r, extensions={})\n"
        "except SystemExit:\n"
        "    pass\n"
        "prof.disable()\n"
        "sys.stdout = out\n"
        "prof.dump_stats(%r)\n"
    ) % (debug_dir, params, FQN, debug_dir, path + ".prof")
    subprocess.run([PYTHON, "-c", code], check=True)
    stream = io.StringIO()
    stats = pstats.Stats(path + ".prof", stream=stream)
    stats.sort_stats("cumulative").print_stats(r"hypervisor/migration|cffi|pycparser|_loader|basic\.py|fork|select|compile", limit)
    lines = [line for line in stream.getvalue().splitlines() if line.strip()]
    start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
    print("cProfile of postcopy_facts, exploded (cumulative; compile = source compiled from the zip):")
    for line in lines[start:]:
        print("  " + line.replace(debug_dir + "/", "").replace(REPO + "/.venv/lib/python3.11/site-packages/", "site-packages/"))


def import_times(path):
    debug_dir = os.path.join(os.path.dirname(path), "debug_dir")
    code = "import sys; sys.path.insert(0, %r); import %s" % (debug_dir, FQN.replace(".modules.postcopy_facts", ".module_utils._facts"))
    proc = subprocess.run([PYTHON, "-X", "importtime", "-c", code], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, check=True)
    rows = []
    for line in proc.stderr.decode().splitlines():
        if "|" not in line or "cumulative" in line:
            continue
        _self, cumulative, name = [part.strip() for part in line.split(":", 1)[1].split("|")]
        if "hypervisor" in name or name in ("cffi", "ctypes", "pycparser", "mmap"):
            rows.append((int(cumulative), name))
    print("imports the probe adds (cumulative us, -X importtime; cffi's parser is imported later, by FFI.cdef):")
    for cumulative, name in sorted(rows, reverse=True)[:12]:
        print("  %8d  %s" % (cumulative, name))


def main(argv):
    runs = int(argv[0]) if argv else 30
    workdir = tempfile.mkdtemp(prefix="hvm-bench-profile-")
    try:
        account = TEST_USER if os.geteuid() == 0 else "root"
        payloads = [
            ("ping", build_payload(workdir, "ansible.builtin.ping", None)),
            ("postcopy_facts root (cffi)", build_payload(workdir, "hypervisor.migration.postcopy_facts", "probe_user=root")),
            ("postcopy_facts %s (cffi)" % account, build_payload(workdir, "hypervisor.migration.postcopy_facts", "probe_user=%s" % account)),
            ("postcopy_facts %s (ctypes)" % account,
             build_payload(workdir, "hypervisor.migration.postcopy_facts", "probe_user=%s ffi_backend=ctypes" % account)),
        ]
        time_payloads(payloads, workdir, runs)
        print()
        profile_payload(payloads[2][1], 40)
        print()
        import_times(payloads[2][1])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
