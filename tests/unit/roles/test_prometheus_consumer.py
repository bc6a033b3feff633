# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The role's prometheus consumer against the real thing.

Runs the role hypervisor.migration.postcopy with ansible-playbook and postcopy_consumers:
[prometheus] over three inventory hosts that are all this machine (local connection): root
(supported), root with the canary (a real loopback post-copy migration), and a Python under a
seccomp filter that denies userfaultfd (unsupported, cause seccomp). Each host writes postcopy.prom
into its own directory of a temp tree. The runs: check mode (writes nothing), a first and a second
run, each keeping its facts beside the tree; the second changes nothing where the canary is off
(the canary's timings differ on every run).

For each host the test starts Debian's prometheus-node-exporter itself (no systemd) with
--collector.textfile.directory=<that directory> on a free loopback port, scrapes /metrics, and
holds every hypervisor_postcopy_* series to the facts; promtool (Debian's prometheus package)
checks the file. The exporter is stopped whatever happens.
"""

from __future__ import absolute_import, division, print_function

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_nova_consumer import snapshot
from test_report import ansible_playbook, collections_path

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
BLOCKED_PYTHON = os.path.join(REPO, "molecule", "shared", "python-userfaultfd-blocked.sh")
EXPORTER = "prometheus-node-exporter"
PROM = "postcopy.prom"
PREFIX = "hypervisor_postcopy_"

HOSTS = {
    "prom-root": {},
    "prom-canary": {"postcopy_canary": True, "postcopy_canary_memory_mb": 16},
    "prom-blocked": {"ansible_python_interpreter": BLOCKED_PYTHON},
}

PLAYBOOK = """\
- name: The prometheus consumer
  hosts: all
  gather_facts: false
  roles:
    - role: hypervisor.migration.postcopy
      vars:
        postcopy_consumers: [prometheus]
        postcopy_prometheus_textfile_dir: "%(top)s/{{ inventory_hostname }}/textfile"
  post_tasks:
    - name: Keep the facts the file must say
      ansible.builtin.copy:
        content: >-
          {{ {'enabled': postcopy_enabled, 'supported': ansible_facts['postcopy_supported'],
              'missing_features': ansible_facts['postcopy_missing_features'], 'postcopy': ansible_facts['postcopy'],
              'canary': ansible_facts['postcopy_canary'] | default(none)} | to_json }}
        dest: "{{ facts_dir }}/{{ inventory_hostname }}.json"
        mode: "0644"
      delegate_to: localhost
      when: facts_dir is defined
"""


def inventory():
    lines = ["all:", "  vars:", "    ansible_connection: local", '    ansible_python_interpreter: "{{ ansible_playbook_python }}"', "  hosts:"]
    for host, host_vars in HOSTS.items():
        lines.append("    %s:%s" % (host, "" if host_vars else " {}"))
        lines.extend("      %s: %s" % (name, json.dumps(value)) for name, value in host_vars.items())
    return "\n".join(lines) + "\n"


def textfile_dir(top, host):
    return os.path.join(top, host, "textfile")


def play(tmp_path, label, *extra):
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=collections_path(), ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0",
               ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-tmp"))
    env.pop("ANSIBLE_CONFIG", None)
    command = [ansible_playbook(), "-i", str(tmp_path / "inventory.yml"), str(tmp_path / "playbook.yml")] + list(extra)
    proc = subprocess.run(command, env=env, cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600, check=False)
    output = proc.stdout.decode("utf-8", "replace")
    (tmp_path / ("output-%s.txt" % label)).write_text(output)
    assert proc.returncode == 0, output[-4000:]
    return output


def role_changes(output, host):
    """The role's tasks that reported a change on host (the playbook's own task left out)."""
    changed, task = [], None
    for line in output.splitlines():
        if line.startswith("TASK ["):
            task = line
        elif line.startswith("changed: [%s]" % host) and task.startswith("TASK [hypervisor.migration.postcopy : "):
            changed.append(task)
    return changed


@pytest.fixture(scope="module")
def runs(tmp_path_factory, root):
    for tool in (EXPORTER, "promtool"):
        if not shutil.which(tool):
            pytest.skip("%s not found (Debian packages prometheus-node-exporter and prometheus; ./dev.sh setup installs them)" % tool)
    if not ansible_playbook():
        pytest.skip("ansible-playbook not found")
    tmp_path = tmp_path_factory.mktemp("prometheus-consumer")
    top = tmp_path / "tree"
    top.mkdir()
    (tmp_path / "inventory.yml").write_text(inventory())
    (tmp_path / "playbook.yml").write_text(PLAYBOOK % {"top": top})
    found = {"top": str(top), "before": snapshot(str(top))}
    play(tmp_path, "check", "--check", "--diff")
    found["after_check"] = snapshot(str(top))
    found["check_listing"] = os.listdir(str(top))
    for label in ("first", "second"):
        facts = tmp_path / ("facts-" + label)
        facts.mkdir()
        started = time.time()
        output = play(tmp_path, label, "-e", "facts_dir=%s" % facts)
        found[label] = {"output": output, "started": started, "finished": time.time(), "tree": snapshot(str(top)),
                        "facts": dict((host, json.loads((facts / (host + ".json")).read_text())) for host in HOSTS)}
    return found


def free_port():
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop(proc):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_until_serving(proc, url, log, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError("node_exporter exited with %s: %s" % (proc.returncode, log.read_text()))
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("node_exporter did not answer on %s: %s" % (url, log.read_text()))


@contextlib.contextmanager
def node_exporter(directory, log, started=None):
    """A node_exporter serving only the textfile collector of directory on a free loopback port: yields its /metrics URL.

    started, a list, receives the process, so that a test can see it gone afterwards."""
    port = free_port()
    url = "http://127.0.0.1:%d/metrics" % port
    command = [EXPORTER, "--collector.disable-defaults", "--collector.textfile", "--web.disable-exporter-metrics",
               "--collector.textfile.directory=%s" % directory, "--web.listen-address=127.0.0.1:%d" % port]
    with open(str(log), "wb") as out:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    if started is not None:
        started.append(proc)
    try:
        _wait_until_serving(proc, url, log)
        yield url
    finally:
        _stop(proc)


def scrape(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode("utf-8")


def series(text, prefix):
    """{(name, sorted label pairs): value} of the samples whose name starts with prefix."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith(prefix):
                found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def expected_series(facts):
    """The hypervisor_postcopy_* series the facts call for, but the timestamp."""
    details, canary = facts["postcopy"], facts["canary"]
    canary_failed = canary is not None and canary["ok"] is False
    info = {"kernel": details["kernel"], "qemu_version": details["qemu"]["version"], "probe_user": details["probe_user"]["name"],
            "access": details["access"]["used"]}
    expected = {
        (PREFIX + "supported", ()): float(facts["supported"] and not canary_failed),
        (PREFIX + "enabled", ()): float(facts["enabled"]),
        (PREFIX + "info", tuple(sorted((k, v) for k, v in info.items() if v))): 1.0,
    }
    for cause in details["causes"] + ([{"feature": "canary", "cause": "canary_failed"}] if canary_failed else []):
        expected[(PREFIX + "missing_feature", (("cause", cause["cause"]), ("feature", cause["feature"])))] = 1.0
    if canary is not None and canary["ok"] is not None:
        expected[(PREFIX + "canary_success", ())] = float(canary["ok"])
        for name, key in (("canary_downtime_seconds", "downtime_ms"), ("canary_duration_seconds", "total_time_ms")):
            if canary[key] is not None:
                expected[(PREFIX + name, ())] = canary[key] / 1000.0
    return expected


def test_check_mode_writes_nothing(runs):
    assert runs["after_check"] == runs["before"] == {}
    assert runs["check_listing"] == [], "check mode made no directory either"


def test_the_facts_are_the_three_kinds_of_host(runs):
    # Without these the other tests would hold the file to a smaller range of facts than they claim.
    # The canary's own outcome is QEMU's business (a loaded machine can make it run out of time):
    # it must have run, and its series then follow whichever outcome it had.
    facts = runs["second"]["facts"]
    assert facts["prom-root"]["supported"] is True and facts["prom-root"]["canary"] is None, facts["prom-root"]
    assert facts["prom-canary"]["canary"] is not None and facts["prom-canary"]["canary"]["ok"] is not None, facts["prom-canary"]
    assert facts["prom-blocked"]["supported"] is False, facts["prom-blocked"]
    assert "seccomp" in [cause["cause"] for cause in facts["prom-blocked"]["postcopy"]["causes"]], facts["prom-blocked"]


@pytest.mark.parametrize("host", sorted(HOSTS))
def test_node_exporter_serves_what_the_facts_say(runs, host, tmp_path):
    directory = textfile_dir(runs["top"], host)
    assert sorted(os.listdir(directory)) == [PROM], "only the file, no temp file left beside it"
    with node_exporter(directory, tmp_path / "node_exporter.log") as url:
        text = scrape(url)
    found = series(text, PREFIX)
    timestamp = found.pop((PREFIX + "probe_timestamp_seconds", ()))
    # The file is the second run's; its timestamp the first run's where that found the same.
    assert found == expected_series(runs["second"]["facts"][host]), text
    run = runs["second"] if host == "prom-canary" else runs["first"]
    assert int(run["started"]) <= timestamp <= run["finished"]
    textfile = series(text, "node_textfile_")
    assert textfile[("node_textfile_scrape_error", ())] == 0.0, text
    assert [labels for name, labels in textfile if name == "node_textfile_mtime_seconds"] != [], text


@pytest.mark.parametrize("host", sorted(HOSTS))
def test_promtool_accepts_the_file(runs, host):
    path = os.path.join(textfile_dir(runs["top"], host), PROM)
    with open(path) as handle:
        proc = subprocess.run(["promtool", "check", "metrics"], stdin=handle, capture_output=True, text=True, check=False)
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")
    assert os.stat(path).st_mode & 0o7777 == 0o644


def test_a_second_run_changes_nothing_without_the_canary(runs):
    for host in ("prom-root", "prom-blocked"):
        assert "TASK [hypervisor.migration.postcopy : Write postcopy.prom] ***" in "".join(role_changes(runs["first"]["output"], host))
        assert role_changes(runs["second"]["output"], host) == [], host
        path = os.path.join(textfile_dir(runs["top"], host), PROM)
        assert runs["second"]["tree"][path] == runs["first"]["tree"][path], host


def test_the_exporter_is_stopped_when_the_test_fails(tmp_path):
    if not shutil.which(EXPORTER):
        pytest.skip("%s not found (Debian package prometheus-node-exporter)" % EXPORTER)
    started = []
    with pytest.raises(RuntimeError):
        with node_exporter(str(tmp_path), tmp_path / "node_exporter.log", started) as url:
            assert "# HELP" in scrape(url) or scrape(url) == ""
            raise RuntimeError("a failing assertion")
    (proc,) = started
    assert proc.poll() is not None


def rst_yaml_blocks(text):
    """The bodies of the ``.. code:: yaml`` blocks of an RST text, unindented."""
    for block in text.split(".. code:: yaml\n")[1:]:
        body, indent = [], None
        for line in block.split("\n"):
            width = len(line) - len(line.lstrip())
            if line.strip() and indent is None:
                indent = width
            elif line.strip() and width < indent:
                break
            body.append(line[indent or 0 :])
        yield "\n".join(body).strip("\n") + "\n"


def alert_examples():
    """The Prometheus rule files the role's docs show: (where, text)."""
    with open(os.path.join(REPO, "docs", "docsite", "rst", "role.rst")) as handle:
        found = [("role.rst", text) for text in rst_yaml_blocks(handle.read()) if text.startswith("groups:")]
    with open(os.path.join(REPO, "roles", "postcopy", "README.md")) as handle:
        blocks = handle.read().split("```yaml\n")[1:]
    return found + [("README.md", block.split("```", 1)[0]) for block in blocks if block.startswith("groups:")]


def test_the_alert_examples_are_rules_promtool_accepts(tmp_path):
    if not shutil.which("promtool"):
        pytest.skip("promtool not found (Debian package prometheus; ./dev.sh setup installs it)")
    examples = alert_examples()
    assert [where for where, _text in examples] == ["role.rst", "README.md"]
    for where, text in examples:
        path = tmp_path / "rules.yml"
        path.write_text(text)
        proc = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, check=False)
        assert proc.returncode == 0, where + ": " + proc.stdout + proc.stderr + text
        assert PREFIX + "missing_feature" in text
