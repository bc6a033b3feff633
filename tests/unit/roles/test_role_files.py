# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The role writes only the files it owns, each atomically (issue 6, "Nothing lost").

Runs the role hypervisor.migration.postcopy with ansible-playbook on localhost
(dev.sh's inventory) with the consumers local_facts and nova pointed into a temp
tree holding a realistic nova.conf and an unrelated drop-in. Without grants, the
role owns two files there: the nova drop-in and the local fact.

- test_writes_only_owned_files: after a run, the only new or changed paths are the
  two owned files; nova.conf and 10-site.conf are byte-for-byte unchanged; a second
  run changes nothing (sha256 and mtime of every file, owned ones included).
- test_killed_run_leaves_old_or_new: the verdict flips between runs (root, supported;
  the unprivileged test account with vm.unprivileged_userfaultfd=0, unsupported), so
  the owned files must change; each run is SIGKILLed, process group and all, at a
  different moment around the consumer tasks. Each owned file, where present, parses
  and is exactly one of the complete contents the role writes; no temp file is left
  beside it.
"""

from __future__ import absolute_import, division, print_function

import configparser
import hashlib
import json
import os
import signal
import subprocess
import time

import hostctl
import pytest
from test_report import ansible_playbook, collections_path

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
INVENTORY = os.path.join(REPO, ".build", "inventory", "localhost.ini")
DROPIN = "50-hypervisor-migration-postcopy.conf"
FACT = "postcopy.fact"

PLAYBOOK = """\
- name: Post-copy readiness, files only
  hosts: localhost
  gather_facts: false
  roles:
    - role: hypervisor.migration.postcopy
      vars:
        postcopy_consumers: [local_facts, nova]
        postcopy_nova_conf_dir: "{nova_dir}"
        postcopy_nova_config_files: ["{nova_conf}"]
        postcopy_nova_config_dirs: ["{nova_dir}"]
        postcopy_fact_path: "{fact_dir}"
        postcopy_probe_user: "{{{{ probe_user }}}}"
"""

SITE_DROPIN = """\
# Site overrides, managed by the site's own tooling.
[DEFAULT]
cpu_allocation_ratio = 4.0
ram_allocation_ratio = 1.0

[libvirt]
cpu_mode = host-model
"""


def realistic_nova_conf():
    """A nova.conf of a few hundred lines: comments, [DEFAULT], [libvirt] with post-copy off, [database] and more."""
    sections = {
        "DEFAULT": [
            ("my_ip", "192.0.2.17"),
            ("host", "compute-17.example.org"),
            ("state_path", "/var/lib/nova"),
            ("instances_path", "$state_path/instances"),
            ("transport_url", "rabbit://nova:secret@192.0.2.2:5672/"),
            ("compute_driver", "libvirt.LibvirtDriver"),
            ("use_neutron", "true"),
            ("firewall_driver", "nova.virt.firewall.NoopFirewallDriver"),
            ("reserved_host_memory_mb", "4096"),
            ("debug", "false"),
            ("log_dir", "/var/log/nova"),
        ],
        "api": [("auth_strategy", "keystone")],
        "database": [("connection", "mysql+pymysql://nova:secret@192.0.2.3/nova"), ("max_pool_size", "10"), ("max_retries", "-1")],
        "api_database": [("connection", "mysql+pymysql://nova:secret@192.0.2.3/nova_api")],
        "glance": [("api_servers", "http://192.0.2.4:9292")],
        "keystone_authtoken": [
            ("www_authenticate_uri", "http://192.0.2.5:5000/"),
            ("auth_url", "http://192.0.2.5:5000/"),
            ("memcached_servers", "192.0.2.6:11211"),
            ("auth_type", "password"),
            ("project_domain_name", "Default"),
            ("user_domain_name", "Default"),
            ("project_name", "service"),
            ("username", "nova"),
            ("password", "secret"),
        ],
        "libvirt": [
            ("virt_type", "kvm"),
            ("images_type", "qcow2"),
            ("live_migration_uri", "qemu+ssh://nova@%s/system"),
            ("live_migration_permit_post_copy", "false"),
            ("live_migration_permit_auto_converge", "true"),
            ("live_migration_timeout_action", "abort"),
            ("live_migration_completion_timeout", "800"),
        ],
        "neutron": [("auth_url", "http://192.0.2.5:5000"), ("region_name", "RegionOne"), ("service_metadata_proxy", "true")],
        "oslo_concurrency": [("lock_path", "/var/lib/nova/tmp")],
        "placement": [("region_name", "RegionOne"), ("auth_type", "password"), ("auth_url", "http://192.0.2.5:5000/v3")],
        "vnc": [("enabled", "true"), ("server_listen", "0.0.0.0"), ("novncproxy_base_url", "http://192.0.2.7:6080/vnc_auto.html")],
    }
    lines = ["# nova.conf of compute-17, rendered by the site's configuration management.", ""]
    for section, options in sections.items():
        lines.append("[%s]" % section)
        lines.append("")
        for index, (key, value) in enumerate(options):
            lines.append("#")
            lines.append("# %s: option %d of [%s]; the defaults are listed commented out," % (key, index, section))
            lines.append("# the way oslo-config-generator writes the sample file. (string value)")
            lines.append("# Possible values: any string; see the nova configuration reference.")
            lines.append("#%s = <None>" % key)
            lines.append("%s = %s" % (key, value))
            lines.append("")
    text = "\n".join(lines) + "\n"
    assert text.count("\n") > 300
    return text


def snapshot(top):
    """{relative path: (kind, sha256 or None, mtime_ns)} of everything under top."""
    found = {}
    for directory, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = os.path.join(directory, name)
            info = os.lstat(path)
            digest = None
            if os.path.isfile(path):
                with open(path, "rb") as handle:
                    digest = hashlib.sha256(handle.read()).hexdigest()
            found[os.path.relpath(path, top)] = ("file" if digest else "dir", digest, info.st_mtime_ns)
    return found


def make_tree(top):
    nova_dir = os.path.join(top, "etc", "nova", "nova.conf.d")
    fact_dir = os.path.join(top, "facts.d")
    os.makedirs(nova_dir)
    os.makedirs(fact_dir)
    with open(os.path.join(top, "etc", "nova", "nova.conf"), "w") as handle:
        handle.write(realistic_nova_conf())
    with open(os.path.join(nova_dir, "10-site.conf"), "w") as handle:
        handle.write(SITE_DROPIN)
    with open(os.path.join(nova_dir, "90-local.conf"), "w") as handle:
        handle.write("[DEFAULT]\nresume_guests_state_on_host_boot = true\n")
    return nova_dir, fact_dir


def setup_run(tmp_path):
    playbook_bin = ansible_playbook()
    if not playbook_bin:
        pytest.skip("ansible-playbook not found")
    if not os.path.exists(INVENTORY):
        pytest.skip("%s is missing: run dev.sh first" % INVENTORY)
    top = str(tmp_path / "tree")
    nova_dir, fact_dir = make_tree(top)
    playbook = str(tmp_path / "playbook.yml")
    with open(playbook, "w") as handle:
        handle.write(PLAYBOOK.format(nova_dir=nova_dir, fact_dir=fact_dir, nova_conf=os.path.join(top, "etc", "nova", "nova.conf")))
    env = dict(os.environ)
    env["ANSIBLE_COLLECTIONS_PATH"] = collections_path()
    env["ANSIBLE_LOCAL_TEMP"] = str(tmp_path / "ansible-tmp")
    env["ANSIBLE_NOCOLOR"] = "1"
    env["ANSIBLE_FORCE_COLOR"] = "0"
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("ANSIBLE_CONFIG", None)

    def command(probe_user):
        return [playbook_bin, "-i", INVENTORY, playbook, "-e", "probe_user=%s" % probe_user]

    return top, nova_dir, fact_dir, command, env


def run(command, env, cwd):
    proc = subprocess.run(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300, check=False)
    output = proc.stdout.decode("utf-8", "replace")
    assert proc.returncode == 0, output[-6000:]
    return output


def read(path):
    with open(path, "rb") as handle:
        return handle.read()


def test_writes_only_owned_files(root, tmp_path):
    top, nova_dir, fact_dir, command, env = setup_run(tmp_path)
    before = snapshot(top)
    time.sleep(0.02)  # so that a rewrite would show in the mtime
    run(command("root"), env, str(tmp_path))
    after = snapshot(top)

    owned = {os.path.relpath(os.path.join(nova_dir, DROPIN), top), os.path.relpath(os.path.join(fact_dir, FACT), top)}
    new = set(after) - set(before)
    assert new == owned, "new paths: %s" % sorted(new)
    assert not set(before) - set(after), "paths removed: %s" % sorted(set(before) - set(after))
    for path, (kind, digest, mtime) in before.items():
        if kind == "file":
            assert after[path] == (kind, digest, mtime), "%s was changed" % path
        else:
            # a directory gets a new mtime when a file is created in it; only the owned files' dirs may
            assert after[path][:2] == (kind, digest)
            if after[path][2] != mtime:
                assert path in (os.path.relpath(nova_dir, top), os.path.relpath(fact_dir, top)), "%s was touched" % path
    assert read(os.path.join(top, "etc", "nova", "nova.conf")) == realistic_nova_conf().encode()
    assert read(os.path.join(nova_dir, "10-site.conf")) == SITE_DROPIN.encode()

    # the owned files are what they claim to be
    fact = json.loads(read(os.path.join(fact_dir, FACT)))
    assert isinstance(fact["supported"], bool)
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(read(os.path.join(nova_dir, DROPIN)).decode())
    assert parser.get("libvirt", "live_migration_permit_post_copy") in ("true", "false")

    time.sleep(0.02)
    output = run(command("root"), env, str(tmp_path))
    assert snapshot(top) == after, "a second run changed the tree"
    assert "changed=0" in output, output[-3000:]


def owned_contents(path):
    return read(path) if os.path.exists(path) else None


def check_whole(fact_path, dropin_path, known):
    """Each owned file, where present, parses and is one of the complete contents seen; no temp file beside it."""
    fact = owned_contents(fact_path)
    if fact is not None:
        json.loads(fact)
        assert fact in known["fact"], "torn or unknown fact:\n%r" % fact
    dropin = owned_contents(dropin_path)
    if dropin is not None:
        parser = configparser.ConfigParser(interpolation=None)
        parser.read_string(dropin.decode())
        assert parser.has_option("libvirt", "live_migration_permit_post_copy")
        assert dropin in known["nova"], "torn or unknown drop-in:\n%r" % dropin
    for directory in (os.path.dirname(fact_path), os.path.dirname(dropin_path)):
        leftovers = [name for name in os.listdir(directory) if name.startswith(".ansible_tmp") or name.endswith(".tmp") or name.startswith(".")]
        assert not leftovers, "temp files left in %s: %s" % (directory, leftovers)


def killed_run(command, env, cwd, trigger, delay):
    """Start the playbook; delay seconds after the task named trigger starts, SIGKILL its whole process group."""
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    seen = []
    try:
        for raw in iter(proc.stdout.readline, b""):
            line = raw.decode("utf-8", "replace")
            seen.append(line)
            if line.startswith("TASK [hypervisor.migration.postcopy : %s" % trigger):
                break
        else:
            pytest.fail("the run ended before task %r:\n%s" % (trigger, "".join(seen[-50:])))
        time.sleep(delay)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.stdout.close()
        proc.wait(timeout=60)
    return "".join(seen)


# (task whose start triggers the kill, seconds after it): inside and around the two writes
MOMENTS = [
    ("Write postcopy.fact", 0.0),
    ("Write postcopy.fact", 0.1),
    ("Write postcopy.fact", 0.25),
    ("Write postcopy.fact", 0.5),
    ("Read the local facts again", 0.0),
    ("Write the nova drop-in", 0.0),
    ("Write the nova drop-in", 0.1),
    ("Write the nova drop-in", 0.25),
    ("Write the nova drop-in", 0.5),
    ("Write the nova drop-in", 1.0),
]


def test_killed_run_leaves_old_or_new(root, test_user, tmp_path):
    top, nova_dir, fact_dir, command, env = setup_run(tmp_path)
    fact_path = os.path.join(fact_dir, FACT)
    dropin_path = os.path.join(nova_dir, DROPIN)
    untouched = {name: read(os.path.join(top, name)) for name in ("etc/nova/nova.conf", "etc/nova/nova.conf.d/10-site.conf")}
    users = ("root", hostctl.TEST_USER)

    def sweep():
        known = {"fact": set(), "nova": set()}
        # the complete contents for either verdict, from whole runs
        for user in users:
            run(command(user), env, str(tmp_path))
            known["fact"].add(read(fact_path))
            known["nova"].add(read(dropin_path))
        assert len(known["fact"]) == 2 and len(known["nova"]) == 2, "the verdict did not flip between %s and %s" % users
        outcomes = []
        for index, (trigger, delay) in enumerate(MOMENTS):
            before = (owned_contents(fact_path), owned_contents(dropin_path))
            killed_run(command(users[index % 2]), env, str(tmp_path), trigger, delay)
            check_whole(fact_path, dropin_path, known)
            after = (owned_contents(fact_path), owned_contents(dropin_path))
            outcomes.append((trigger, delay, after[0] != before[0], after[1] != before[1]))
        return known, outcomes

    known, outcomes = hostctl.steady(sweep, sysctl=0)
    # the kills fell on both sides of each write: some left the old file, some the new one
    assert {changed for _trigger, _delay, changed, _unused in outcomes} == {True, False}, outcomes
    assert {changed for _trigger, _delay, _unused, changed in outcomes} == {True, False}, outcomes
    for name, content in untouched.items():
        assert read(os.path.join(top, name)) == content, "%s was changed" % name
