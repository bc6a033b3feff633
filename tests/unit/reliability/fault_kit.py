# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""How the fault matrix (test_fault_matrix.py) puts each fault in place and checks the answer.

Three ways to inject, all on this machine's real kernel:

- ``child``: inside the probe child only, right before observe() (or before the account
  switch): a seccomp filter returning an errno for one call, a resource limit, a
  supplementary group. The module runs in this process through postcopy_facts.main().
- ``process``: the module runs as its own process (``python postcopy_facts.py args.json``,
  as AnsiballZ runs it) under tests/tools/fault_exec.py or seccomp_exec.py.
- ``special``: a scenario with its own test function in test_fault_matrix.py.

Rows whose ``ansible`` flag is set also run through ansible-playbook, each as one host of a
single play, with the same wrapper as the host's ansible_python_interpreter.
"""

import errno
import json
import os
import re
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections import namedtuple

import pyseccomp
from ansible_collections.hypervisor.migration.plugins.module_utils import _facts, _switch
from ansible_collections.hypervisor.migration.plugins.module_utils._uapi import ioctl_requests
from ansible_collections.hypervisor.migration.plugins.modules import postcopy_facts
from module_main import run_module_main

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
TOOLS = os.path.join(REPO, "tests", "tools")
MODULES = {name: os.path.join(REPO, "plugins", "modules", "postcopy_%s.py" % name) for name in ("facts", "canary")}
MODULE = MODULES["facts"]
PAGE = os.sysconf("SC_PAGE_SIZE")
REQUESTS = ioctl_requests()
QEMU72 = "/usr/bin/qemu-system-x86_64"

# --------------------------------------------------------------------------------------------
# the records


Fault = namedtuple("Fault", "name inject options expect ansible host")
Rule = namedtuple("Rule", "syscall errno arg op value label")
Child = namedtuple("Child", "rules at nofile_free as_room groups act")
Process = namedtuple("Process", "tool args python_flags module")
Run = namedtuple("Run", "answer stderr events left_files left_processes")
Special = namedtuple("Special", "test how")
Expect = namedtuple("Expect", "kind missing causes checks pattern")


def F(name, inject, options, expect, ansible=False, host=None):
    return Fault(name, inject, options, expect, ansible, host)


def deny(syscall, err, label=None):
    return Rule(syscall, err, None, None, None, label or syscall + "()")


def deny_device_open(err):
    # Only the probe opens a file O_RDWR|O_CLOEXEC; Python's own opens are read-only.
    return Rule("openat", err, 2, pyseccomp.MASKED_EQ, os.O_RDWR | os.O_CLOEXEC, "open(/dev/userfaultfd, O_RDWR)")


def deny_ioctl(name, err):
    return Rule("ioctl", err, 1, pyseccomp.MASKED_EQ, REQUESTS[name], "ioctl(%s = 0x%X)" % (name, REQUESTS[name]))


def deny_page_mmap(err):
    # Python's allocator maps arenas of 256 KiB and more, never a single page.
    return Rule("mmap", err, 1, pyseccomp.EQ, PAGE, "mmap() of one page")


def child(*rules, at="probe", nofile_free=None, as_room=None, groups=None, act=None):
    return Child(tuple(rules), at, nofile_free, as_room, groups, act)


def process(tool, *args, python_flags=(), module="facts"):
    return Process(tool, tuple(args), tuple(python_flags), module)


def supported(**checks):
    return Expect("supported", [], [], _dotted(checks), None)


def unsupported(missing, *causes, **checks):
    return Expect("unsupported", list(missing), sorted(tuple(c.split(":")) for c in causes), _dotted(checks), None)


def fails(pattern):
    return Expect("fails", None, None, {}, pattern)


def interpreter_dies(pattern):
    return Expect("interpreter", None, None, {}, pattern)


def note(text):
    return Expect("note", None, None, {}, text)


def canary_refused(pattern):
    return Expect("canary_refused", None, None, {}, pattern)


def canary_done():
    """ok true or ok false: both are a defined end, as long as nothing is left behind."""
    return Expect("canary_done", None, None, {}, None)


def _dotted(checks):
    # access__device__errno=... reads better in the table as access.device.errno
    return dict((key.replace("__", "."), value) for key, value in checks.items())


# --------------------------------------------------------------------------------------------
# putting a fault in place inside the probe child


def _is_open(fd):
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _free_fds():
    # fstat, not a listing of /proc/self/fd: the listing would count its own descriptor.
    return [fd for fd in range(256) if not _is_open(fd)]


def _vm_size():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize")


def _arg(rule):
    if rule.op == pyseccomp.MASKED_EQ:
        # ioctl requests and open flags: compare the low 32 bits, as the kernel ABI passes them.
        return [pyseccomp.Arg(rule.arg, rule.op, 0xFFFFFFFF, rule.value)]
    return [] if rule.arg is None else [pyseccomp.Arg(rule.arg, rule.op, rule.value)]


def _load_filter(rules):
    flt = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
    for rule in rules:
        # errno "0": the call returns success without doing anything.
        flt.add_rule(pyseccomp.ERRNO(getattr(errno, rule.errno, 0)), rule.syscall, *_arg(rule))
    flt.load()


def _close_and_hang():
    os.closerange(3, 4096)
    time.sleep(60)


ACTS = {"close_and_hang": _close_and_hang}


def _prepare(spec):
    """Runs in the probe child, right before the call the fault is aimed at."""
    if spec.groups is not None:
        os.setgroups(spec.groups)
    if spec.nofile_free is not None:
        limit = _free_fds()[spec.nofile_free]
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    if spec.as_room is not None:
        limit = _vm_size() + spec.as_room
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    if spec.rules:
        _load_filter(spec.rules)
    if spec.act:
        ACTS[spec.act]()


def install_in_child(monkeypatch, spec):
    owner, name = (_facts, "observe") if spec.at == "probe" else (_switch, "become")
    real = getattr(owner, name)

    def with_fault(*args, **kwargs):
        _prepare(spec)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, with_fault)


def run_module_here(capsys, options):
    """postcopy_facts.main() in this process; the module's JSON answer."""
    return run_module_main(postcopy_facts.main, options, capsys)


# --------------------------------------------------------------------------------------------
# running the module as a process under a wrapper


def collections_path():
    return os.pathsep.join(p for p in sys.path if p and os.path.isdir(os.path.join(p, "ansible_collections")))


def wrapper_argv(spec, log=None):
    """The interpreter command line of a Process row: the tool, its fault options, then python."""
    tool = [sys.executable, os.path.join(TOOLS, spec.tool + ".py")] + list(spec.args)
    if log and spec.tool == "fault_exec" and any(a.startswith("--on") for a in spec.args):
        tool += ["--log", log, "--linger", "10"]
    return tool + ["--", sys.executable] + list(spec.python_flags)


def site_packages():
    return [p for p in sys.path if p.endswith("site-packages")]


def private_tmpdir():
    """A short TMPDIR of its own (the canary's sockets must fit in sun_path): what is left in it is the run's.

    Mode 1777, like /tmp: a shared directory where other accounts may create files too.
    """
    path = tempfile.mkdtemp(prefix="hvm-rel-", dir="/tmp")
    os.chmod(path, 0o1777)
    return path


def processes_mentioning(marker):
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as handle:
                cmdline = handle.read().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if marker in cmdline and int(pid) != os.getpid():
            found.append(cmdline)
    return found


def module_env(python_flags=(), tmpdir=None):
    paths = [collections_path()] + (site_packages() if "-S" in python_flags else [])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths))
    if tmpdir:
        env["TMPDIR"] = tmpdir
    return env


def run_module_process(spec, options, tmp):
    """The module run as a process under the wrapper, with what it left behind in its TMPDIR and process table."""
    args_file = os.path.join(tmp, "args.json")
    with open(args_file, "w") as handle:
        json.dump({"ANSIBLE_MODULE_ARGS": options}, handle)
    log = os.path.join(tmp, "events.jsonl")
    tmpdir = private_tmpdir()
    try:
        proc = subprocess.run(wrapper_argv(spec, log) + [MODULES[spec.module], args_file], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=module_env(spec.python_flags, tmpdir), timeout=120, check=False)
        left_files, left_processes = os.listdir(tmpdir), processes_mentioning(tmpdir)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    out = proc.stdout.decode("utf-8", "replace").strip()
    answer = json.loads(out.splitlines()[-1]) if out.startswith("{") or "\n{" in out else None
    return Run(answer, proc.stderr.decode("utf-8", "replace"), read_events(log), left_files, left_processes)


class Background(object):
    """A module process under its wrapper, left running so that a test can act on it meanwhile."""

    def __init__(self, spec, options, tmp):
        args_file = os.path.join(tmp, "args.json")
        with open(args_file, "w") as handle:
            json.dump({"ANSIBLE_MODULE_ARGS": options}, handle)
        self.log = os.path.join(tmp, "events.jsonl")
        self.tmpdir = private_tmpdir()
        self.proc = subprocess.Popen(wrapper_argv(spec, self.log) + [MODULES[spec.module], args_file], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=module_env(spec.python_flags, self.tmpdir))

    def wait_event(self, number, seconds=60):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for event in read_events(self.log):
                if event["event"] == "notify" and event["number"] == number:
                    return event
            assert self.proc.poll() is None, self.proc.communicate()
            time.sleep(0.02)
        raise AssertionError("notification %d never came" % number)

    def module_pid(self):
        """The module's process: the one child of the wrapper (fault_exec.py)."""
        with open("/proc/%d/task/%d/children" % (self.proc.pid, self.proc.pid)) as handle:
            return int(handle.read().split()[0])

    def qemu_pid(self, role):
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open("/proc/%s/cmdline" % pid, "rb") as handle:
                    argv = handle.read().split(b"\0")
            except OSError:
                continue
            if argv[0].endswith(b"qemu-system-x86_64") and any(self.tmpdir.encode() in a and (role + ".qmp").encode() in a for a in argv):
                return int(pid)
        raise AssertionError("no %s QEMU running" % role)

    def finish(self, timeout=120, keep_tmpdir=False):
        out, err = self.proc.communicate(timeout=timeout)
        left_files, left_processes = os.listdir(self.tmpdir), processes_mentioning(self.tmpdir)
        if not keep_tmpdir:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
        text = out.decode("utf-8", "replace").strip()
        answer = json.loads(text.splitlines()[-1]) if text else None
        return Run(answer, err.decode("utf-8", "replace"), read_events(self.log), left_files, left_processes)


# --------------------------------------------------------------------------------------------
# checking the answer


def _get(facts, dotted):
    value = facts
    for key in dotted.split("."):
        value = value[key]
    return value


NO_TRACEBACK = "(traceback unavailable)"
# What Ansible says when the interpreter died without printing a result (2.19, then earlier versions).
MODULE_FAILURE = ("Module result deserialization failed", "MODULE FAILURE")


def check_canary(expect, answer):
    assert answer is not None and not answer.get("failed"), answer
    assert answer.get("exception", NO_TRACEBACK) == NO_TRACEBACK, answer
    canary = answer["ansible_facts"]["postcopy_canary"]
    if expect.kind == "canary_refused":
        assert canary["ok"] is False, canary
        assert re.search(expect.pattern, canary["error"]), canary["error"]
    else:
        assert canary["ok"] in (True, False), canary


def check(expect, answer, stderr=""):
    """Assert that the module's answer (or the interpreter's death) is the one the row defines."""
    if expect.kind.startswith("canary"):
        return check_canary(expect, answer)
    if answer is not None and answer.get("status"):
        # a result recorded by the play's callback: ansible-core 2.19 keeps the status out of the result
        answer = dict(answer, failed=answer["status"] == "failed")
    if expect.kind == "interpreter":
        assert answer is None or answer.get("msg", "").startswith(MODULE_FAILURE), answer
        assert re.search(expect.pattern, stderr or answer.get("module_stderr", "")), stderr
        return
    assert answer is not None, stderr
    # ansible-core 2.19 marks every failed result with this placeholder when the module sent no traceback.
    assert answer.get("exception", NO_TRACEBACK) == NO_TRACEBACK and "Traceback" not in json.dumps(answer), answer
    if expect.kind == "fails":
        assert answer.get("failed") is True, answer
        assert "\n" not in answer["msg"], answer["msg"]
        assert re.search(expect.pattern, answer["msg"]), answer["msg"]
        return
    assert not answer.get("failed"), answer.get("msg")
    facts = answer["ansible_facts"]
    details = facts["postcopy"]
    assert facts["postcopy_supported"] is (expect.kind == "supported"), details["causes"]
    assert facts["postcopy_missing_features"] == expect.missing, details["causes"]
    assert sorted((c["feature"], c["cause"]) for c in details["causes"]) == [tuple(c) for c in expect.causes], details["causes"]
    for dotted, value in expect.checks.items():
        assert _get(details, dotted) == value, (dotted, _get(details, dotted))


def format_options(options, ctx):
    return dict((key, value.format(**ctx) if isinstance(value, str) else value) for key, value in options.items())


# --------------------------------------------------------------------------------------------
# the table, for the reliability guide (docs/docsite/rst/reliability.rst)


def describe_inject(inject):
    if isinstance(inject, Child):
        parts = ["%s → %s" % (rule.label, rule.errno if rule.errno != "0" else "0 without acting") for rule in inject.rules]
        if inject.groups is not None:
            parts.insert(0, "module has supplementary groups %s" % inject.groups)
        if inject.nofile_free is not None:
            parts.append("RLIMIT_NOFILE leaving %d free fds" % inject.nofile_free)
        if inject.as_room is not None:
            parts.append("RLIMIT_AS at the child's size + %d bytes" % inject.as_room)
        if inject.act:
            parts.append(inject.act.replace("_", " "))
        where = "seccomp in the probe child" if inject.rules else "in the probe child"
        if inject.at == "switch":
            where += ", before the account switch"
        return "%s: %s" % (where, ", ".join(parts))
    if isinstance(inject, Process):
        flags = " ".join(inject.python_flags)
        return "`%s.py %s -- python%s`" % (inject.tool, " ".join(inject.args), " " + flags if flags else "")
    return inject.how


def describe_options(options):
    text = []
    if "accel" in options or "memory_mb" in options:
        return "canary, " + ", ".join("%s %s" % (k, v) for k, v in sorted(options.items()))
    if options.get("qemu_binary") == QEMU72:
        text.append("QEMU 7.2")
    elif options.get("qemu_binary") == "{qemu9}":
        text.append("QEMU 9.1")
    if options.get("probe_user"):
        text.append("as the test account")
    if options.get("memory_backends"):
        text.append("+".join(options["memory_backends"]))
    if options.get("timeout"):
        text.append("timeout %ss" % options["timeout"])
    return ", ".join(text)


def _plain(pattern):
    return re.sub(r"\\(.)", r"\1", pattern)


def describe_expect(expect):
    if expect.kind == "canary_refused":
        return "ok: false, error `%s`; nothing left running or on disk" % _plain(expect.pattern)
    if expect.kind == "canary_done":
        return "each ok: true or ok: false; nothing left running or on disk"
    if expect.kind == "note":
        return expect.pattern
    if expect.kind == "fails":
        return "fails, one line: `%s`" % _plain(expect.pattern)
    if expect.kind == "interpreter":
        return "the interpreter dies before the module runs (Ansible: MODULE FAILURE): `%s`" % _plain(expect.pattern)
    text = "supported" if expect.kind == "supported" else "unsupported: %s" % ", ".join(expect.missing)
    if expect.causes:
        text += " (" + ", ".join("%s←%s" % (f, c) for f, c in expect.causes) + ")"
    if expect.checks:
        text += "; " + ", ".join("%s=%s" % (k, v) for k, v in expect.checks.items())
    return text


def rst(faults):
    """The matrix as the RST list-table the reliability guide carries."""
    import rst_table

    return rst_table.from_pipe_table(markdown(faults))


def markdown(faults):
    lines = ["| # | fault | injected by | options | outcome | Ansible |", "|---|---|---|---|---|---|"]
    for number, fault in enumerate(faults, 1):
        lines.append("| %d | %s | %s | %s | %s | %s |" % (
            number, fault.name, describe_inject(fault.inject), describe_options(fault.options), describe_expect(fault.expect),
            "yes" if fault.ansible else ""))
    return "\n".join(lines) + "\n"


def read_events(path):
    if not os.path.exists(path):
        return []
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


# --------------------------------------------------------------------------------------------
# the Ansible play: one host per fault, its wrapper as the host's interpreter

PLAYBOOK = """
- name: Probe every host, each with its fault
  hosts: all
  gather_facts: false
  tasks:
    - name: probe
      hypervisor.migration.postcopy_facts:
        qemu_binary: "{{ opt.qemu_binary | default(omit) }}"
        probe_user: "{{ opt.probe_user | default(omit) }}"
        memory_backends: "{{ opt.memory_backends | default(omit) }}"
        timeout: "{{ opt.timeout | default(omit) }}"
    - name: after
      ansible.builtin.debug:
        msg: this host went on to the next task
"""

RECORDER = '''
import json, os
from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    """Writes every task result of every host as one JSON line."""
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "record"
    CALLBACK_NEEDS_ENABLED = True

    def _record(self, result, status):
        host = getattr(result, "host", None) or result._host
        task = getattr(result, "task", None) or result._task
        data = dict(getattr(result, "result", None) or result._result, status=status)
        with open(os.environ["HVM_RECORD"], "a") as out:
            out.write(json.dumps({"host": host.get_name(), "task": task.get_name(), "result": data}, default=str) + "\\n")

    def v2_runner_on_ok(self, result, **_kwargs):
        self._record(result, "ok")

    def v2_runner_on_failed(self, result, **_kwargs):
        self._record(result, "failed")

    def v2_runner_on_unreachable(self, result, **_kwargs):
        self._record(result, "unreachable")
'''


def host_name(fault):
    return re.sub(r"[^a-z0-9]+", "_", fault.name.lower()).strip("_")


def _wrapper_script(path, argv):
    with open(path, "w") as handle:
        handle.write("#!/bin/sh\nexec %s \"$@\"\n" % " ".join(shlex.quote(a) for a in argv))
    os.chmod(path, 0o755)
    return path


def _inventory(rows, ctx, tmp):
    hosts = {"healthy": {"ansible_python_interpreter": sys.executable, "opt": {}}}
    for fault in rows:
        name = host_name(fault)
        argv = wrapper_argv(fault.inject, os.path.join(tmp, name + ".events"))
        hosts[name] = {"ansible_python_interpreter": _wrapper_script(os.path.join(tmp, name + ".sh"), argv), "opt": format_options(fault.options, ctx)}
    remote = os.path.join(tmp, "remote_tmp")
    return {"all": {"hosts": hosts, "vars": {"ansible_connection": "local", "ansible_remote_tmp": remote}}}


def run_play(rows, ctx, tmp):
    """Run the play; {"results": {host: {task: result}}, "seconds", "leftovers", "ctx"}."""
    os.makedirs(os.path.join(tmp, "callbacks"))
    with open(os.path.join(tmp, "callbacks", "record.py"), "w") as handle:
        handle.write(RECORDER)
    with open(os.path.join(tmp, "play.yml"), "w") as handle:
        handle.write(PLAYBOOK)
    inventory = _inventory(rows, ctx, tmp)
    with open(os.path.join(tmp, "inventory.json"), "w") as handle:
        json.dump(inventory, handle)
    record = os.path.join(tmp, "record.jsonl")
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=collections_path(), ANSIBLE_CALLBACK_PLUGINS=os.path.join(tmp, "callbacks"),
               ANSIBLE_CALLBACKS_ENABLED="record", HVM_RECORD=record, ANSIBLE_FORKS=str(len(rows) + 1), ANSIBLE_NOCOLOR="1",
               ANSIBLE_LOCAL_TEMP=os.path.join(tmp, "local_tmp"), ANSIBLE_RETRY_FILES_ENABLED="0", ANSIBLE_INVENTORY_ENABLED="yaml")
    playbook = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
    start = time.monotonic()
    proc = subprocess.run([playbook, "-i", os.path.join(tmp, "inventory.json"), os.path.join(tmp, "play.yml")], cwd=tmp, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300, check=False)
    seconds = time.monotonic() - start
    results = {}
    for line in read_events(record):
        results.setdefault(line["host"], {})[line["task"]] = line["result"]
    assert set(results) == set(inventory["all"]["hosts"]), proc.stdout.decode()
    return {"results": results, "seconds": seconds, "leftovers": processes_mentioning(tmp), "ctx": ctx, "output": proc.stdout.decode()}
