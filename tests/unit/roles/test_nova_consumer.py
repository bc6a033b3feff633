# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The nova and kolla consumers change what nova-compute uses (issue 15).

Runs the role with ansible-playbook over inventory hosts that are all this machine (local
connection), one per way of starting nova-compute, each with its own nova configuration below
the test's temporary directory (the module's ``home`` points oslo.config's default search there,
through module_defaults). After the role ran, oslo.config itself (PyPI) reads each host's files
as nova-compute would: the value must be the role's verdict, or the role must have failed the
host naming the file and line that wins. The verdict is true for root on this machine, and false
where the target page size is 64 KiB. The kolla hosts' per-host nova.conf is then merged by
kolla-ansible's own merge_configs action plugin (from its wheel), and oslo.config reads the result.
"""

from __future__ import absolute_import, division, print_function

import glob
import json
import os
import subprocess

import nova_parts
import pytest
from oslo_config import cfg
from test_report import ansible_playbook, collections_path

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
DROPIN = "50-hypervisor-migration-postcopy.conf"

# host: (nova.conf, nova-compute.conf, --config-file args, --config-dir args, where the drop-in goes, verdict)
# Paths are relative to the host's own directory; "home" is its nova account's home.
ROWS = {
    "no-arguments": ("false", None, [], [], "home/.nova/nova.conf.d", True),
    "config-file": ("false", None, ["home/.nova/nova.conf"], [], "home/.nova/nova.conf.d", True),
    "config-file-unset": (None, None, ["home/.nova/nova.conf"], [], "home/.nova/nova.conf.d", True),
    "config-file-and-dir": ("false", None, ["etc/nova.conf"], ["etc/nova.conf.d"], "etc/nova.conf.d", True),
    "nova-compute-conf": ("true", "true", ["etc/nova.conf", "etc/nova-compute.conf"], [], "home/.nova/nova.conf.d", False),
}
FAILS = {"config-file": "home/.nova/nova.conf"}
OVERRIDE = {"nova-compute-conf": "etc/nova-compute.conf"}


def nova_text(value):
    text = "[DEFAULT]\n# site settings\ndebug = false\n\n[libvirt]\nvirt_type = kvm\n"
    return text + ("live_migration_permit_post_copy = %s\n" % value if value is not None else "") + "\n[vnc]\nenabled = true\n"


def host_dir(top, host):
    return os.path.join(top, host)


def inventory(top):
    lines = ["all:", "  vars:", "    ansible_connection: local", '    ansible_python_interpreter: "{{ ansible_playbook_python }}"',
             "    postcopy_probe_user: root", "    postcopy_report: %s/report/postcopy.html" % top, "  hosts:"]
    for host, (nova, compute, files, dirs, dropin, verdict) in ROWS.items():
        base = host_dir(top, host)
        lines += ["    %s:" % host,
                  "      postcopy_consumers: [local_facts, nova]",
                  "      postcopy_fact_path: %s/facts.d" % base,
                  "      postcopy_nova_conf_dir: %s/%s" % (base, dropin),
                  "      postcopy_nova_config_files: %s" % ["%s/%s" % (base, path) for path in files],
                  "      postcopy_nova_config_dirs: %s" % ["%s/%s" % (base, path) for path in dirs],
                  "      postcopy_nova_conflicts: %s" % ("override" if host in OVERRIDE else "fail"),
                  "      nova_home: %s/home" % base,
                  "      postcopy_target_page_size: %d" % (4096 if verdict else 65536)]
        for path, value in (((files or ["home/.nova/nova.conf"])[0], nova), ("etc/nova-compute.conf", compute)):
            if value is not None or (path == (files or ["home/.nova/nova.conf"])[0]):
                os.makedirs(os.path.dirname(os.path.join(base, path)), exist_ok=True)
                with open(os.path.join(base, path), "w") as handle:
                    handle.write(nova_text(value))
        for path in dirs:
            os.makedirs(os.path.join(base, path), exist_ok=True)
    for host, verdict in (("kolla-on", True), ("kolla-off", False)):
        lines += ["    %s:" % host, "      postcopy_consumers: [kolla]", "      postcopy_kolla_config_dir: %s/kolla" % top,
                  "      nova_home: %s/home" % host_dir(top, host), "      postcopy_target_page_size: %d" % (4096 if verdict else 65536)]
    # an operator's own per-host override of kolla-off, permitting post-copy among other settings
    os.makedirs(os.path.join(top, "kolla", "nova", "kolla-off"))
    with open(os.path.join(top, "kolla", "nova", "kolla-off", "nova.conf"), "w") as handle:
        handle.write(nova_text("true"))
    with open(os.path.join(top, "kolla", "nova.conf"), "w") as handle:
        handle.write("[libvirt]\nlive_migration_permit_post_copy = false\ncpu_mode = host-model\n")
    return "\n".join(lines) + "\n"


PLAYBOOK = """\
- name: The nova and kolla consumers
  hosts: all
  gather_facts: false
  module_defaults:
    hypervisor.migration.postcopy_nova_config:
      home: "{{ nova_home }}"
  tasks:
    - name: Apply the postcopy role
      ansible.builtin.include_role:
        name: hypervisor.migration.postcopy

- name: Merge each kolla host's nova.conf with kolla-ansible's own plugin
  hosts: kolla-on:kolla-off
  gather_facts: false
  tasks:
    - name: Merge nova.conf as kolla-ansible's nova-cell role does
      merge_configs:
        sources:
          - "%(top)s/kolla-base.conf"
          - "%(top)s/kolla/global.conf"
          - "%(top)s/kolla/nova.conf"
          - "%(top)s/kolla/nova/nova-compute.conf"
          - "%(top)s/kolla/nova/{{ inventory_hostname }}/nova.conf"
          - "%(top)s/kolla/nova/{{ inventory_hostname }}/nova-compute.conf"
        dest: "%(top)s/merged/{{ inventory_hostname }}/nova.conf"
        mode: "0600"
"""


def oslo_value(files, dirs, default_files=(), default_dirs=()):
    opts = cfg.ConfigOpts()
    opts.register_opt(cfg.BoolOpt("live_migration_permit_post_copy", default=False), group="libvirt")
    args = ["--config-file=%s" % path for path in files] + ["--config-dir=%s" % path for path in dirs]
    opts(args, project="nova", prog="nova-compute", default_config_files=list(default_files), default_config_dirs=list(default_dirs))
    return opts.libvirt.live_migration_permit_post_copy


def nova_uses(top, host):
    """What oslo.config makes of the host's files, nova-compute started as its row says."""
    nova, _compute, files, dirs, _dropin, _verdict = ROWS[host]
    base = host_dir(top, host)
    home = os.path.join(base, "home", ".nova")
    default_files = [] if files else [path for path in [os.path.join(home, "nova.conf")] if os.path.exists(path)]
    default_dirs = [] if dirs else [path for path in [os.path.join(home, "nova.conf.d")] if os.path.isdir(path)]
    return oslo_value([os.path.join(base, path) for path in files], [os.path.join(base, path) for path in dirs], default_files, default_dirs)


def snapshot(top):
    found = {}
    for directory, _dirs, names in os.walk(top):
        for name in names:
            path = os.path.join(directory, name)
            with open(path, "rb") as handle:
                found[path] = (handle.read(), os.stat(path).st_mtime_ns)
    return found


def play(tmp_path, label, *extra):
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=collections_path(), ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0",
               ANSIBLE_ACTION_PLUGINS=str(tmp_path / "action_plugins"), ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-tmp"))
    env.pop("ANSIBLE_CONFIG", None)
    command = [ansible_playbook(), "-i", str(tmp_path / "inventory.yml"), str(tmp_path / "playbook.yml")] + list(extra)
    proc = subprocess.run(command, env=env, cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600, check=False)
    output = proc.stdout.decode("utf-8", "replace")
    with open(str(tmp_path / ("output-%s.txt" % label)), "w") as handle:
        handle.write(output)
    return proc.returncode, output


@pytest.fixture(scope="module")
def runs(tmp_path_factory, root):
    if not ansible_playbook():
        pytest.skip("ansible-playbook not found")
    tmp_path = tmp_path_factory.mktemp("nova-consumer")
    top = str(tmp_path / "tree")
    os.makedirs(top)
    (tmp_path / "inventory.yml").write_text(inventory(top))
    (tmp_path / "playbook.yml").write_text(PLAYBOOK % {"top": top})
    (tmp_path / "tree" / "kolla-base.conf").write_text("[DEFAULT]\ndebug = False\n\n[libvirt]\nvirt_type = kvm\n")
    nova_parts.kolla_merge_configs(str(tmp_path / "action_plugins"))
    for host in ("kolla-on", "kolla-off"):
        os.makedirs(os.path.join(top, "merged", host))
    # check mode first: it decides, shows the diff, fails the conflicting host, and writes nothing
    before = snapshot(top)
    check = play(tmp_path, "check", "--check", "--diff")
    after_check = snapshot(top)
    first = play(tmp_path, "first", "--diff")
    after_first = snapshot(top)
    second = play(tmp_path, "second", "--diff")
    return {"top": top, "check": check, "first": first, "second": second, "before": before, "after_check": after_check,
            "after_first": after_first, "after_second": snapshot(top)}


def recap(output, host):
    line = [line for line in output.splitlines() if line.startswith(host + " ") and "ok=" in line]
    assert len(line) == 1, output[-3000:]
    return dict(item.split("=") for item in line[0].split(":", 1)[1].split())


def test_check_mode_writes_nothing(runs):
    assert runs["after_check"] == runs["before"]
    rc, output = runs["check"]
    assert rc == 2, output[-3000:]
    assert recap(output, "config-file")["failed"] == "1"
    # the override shows its change as a diff
    assert "-live_migration_permit_post_copy = true\n+live_migration_permit_post_copy = false" in output, output[-5000:]


@pytest.mark.parametrize("host", sorted(ROWS))
def test_nova_uses_the_verdict_or_the_host_failed(runs, host):
    rc, output = runs["first"]
    verdict = ROWS[host][5]
    if host in FAILS:
        assert rc == 2
        path = os.path.join(host_dir(runs["top"], host), FAILS[host])
        lines = open(path).read().splitlines()
        line = lines.index("live_migration_permit_post_copy = false") + 1
        message = "%s line %d sets [libvirt] live_migration_permit_post_copy = false" % (path, line)
        assert message in output
        assert recap(output, host)["failed"] == "1"
        assert not os.path.exists(os.path.join(host_dir(runs["top"], host), ROWS[host][4], DROPIN))
        return
    assert recap(output, host)["failed"] == "0"
    assert nova_uses(runs["top"], host) is verdict
    fact = json.loads(open(os.path.join(host_dir(runs["top"], host), "facts.d", "postcopy.fact")).read())
    assert fact["enabled"] is verdict and fact["nova"]["value"] is verdict
    assert fact["nova"]["source"] == "variables"
    assert fact["nova"]["evaluator"].startswith("oslo.config ")
    rows = {row["host"]: row for row in json.loads(open(os.path.join(runs["top"], "report", "postcopy.json")).read())["hosts"]}
    assert rows[host]["nova"]["value"] is verdict and rows[host]["nova"]["file"] == fact["nova"]["file"]
    html = open(os.path.join(runs["top"], "report", "postcopy.html")).read()
    assert '<li data-host="%s" data-nova="%s">' % (host, str(verdict).lower()) in html


def test_override_keeps_a_backup_and_is_idempotent(runs):
    host = "nova-compute-conf"
    path = os.path.join(host_dir(runs["top"], host), OVERRIDE[host])
    assert open(path).read() == nova_text("false")
    backups = glob.glob(path + ".*~")
    assert len(backups) == 1 and open(backups[0]).read() == nova_text("true")
    assert recap(runs["second"][1], host)["changed"] == "0"
    for path, (content, mtime) in runs["after_second"].items():
        if "/merged/" not in path and "/report/" not in path:
            assert runs["after_first"][path] == (content, mtime), path


@pytest.mark.parametrize("host,verdict", [("kolla-on", True), ("kolla-off", False)])
def test_kolla_merged_config_carries_the_verdict(runs, host, verdict):
    merged = os.path.join(runs["top"], "merged", host, "nova.conf")
    assert os.path.exists(merged), runs["first"][1][-4000:]
    assert oslo_value([merged], []) is verdict
    per_host = open(os.path.join(runs["top"], "kolla", "nova", host, "nova.conf")).read()
    if host == "kolla-off":  # the operator's other settings are still there
        assert per_host == nova_text("false")
    assert recap(runs["second"][1], host)["changed"] == "0"
