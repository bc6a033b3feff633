# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The value nova-compute uses, read the way oslo.config reads it (issue 15).

Real parts: oslo.config from PyPI, with the option registered as nova's own nova/conf/libvirt.py
registers it (read from nova's wheel, which is not installed: it pulls in most of OpenStack);
Debian's nova-compute package, unpacked and never installed, as the source of the arguments.
Every file lives below the test's temporary directory: Host(root) reads the host's paths there.
"""

from __future__ import absolute_import, division, print_function

import ast
import itertools
import os
import subprocess
import sys
import time

import nova_parts
import pytest
from ansible_collections.hypervisor.migration.plugins.module_utils import _novaconf as conf
from ansible_collections.hypervisor.migration.plugins.module_utils import _novastart as start
from oslo_config import cfg

DROPIN = "/etc/nova/nova.conf.d/50-hypervisor-migration-postcopy.conf"
NOVA_CONF = "/etc/nova/nova.conf"
COMPUTE_CONF = "/etc/nova/nova-compute.conf"
LOCAL = "/etc/nova/nova.conf.d/90-local.conf"
HOME = "/var/lib/nova"
ARGS = {
    "none": [],
    "file": ["--config-file", NOVA_CONF],
    "debian": ["--config-file=%s" % NOVA_CONF, "--config-file=%s" % COMPUTE_CONF],
    "file+dir": ["--config-file", NOVA_CONF, "--config-dir", "/etc/nova/nova.conf.d"],
    "dir+file": ["--config-dir=/etc/nova/nova.conf.d", "--config-file=%s" % NOVA_CONF],
}


def write(root, path, value, extra=""):
    """A nova config file at the host path; value None leaves the option out."""
    real = os.path.join(root, path.lstrip("/"))
    os.makedirs(os.path.dirname(real), exist_ok=True)
    text = "[DEFAULT]\ndebug = false\n%s\n[libvirt]\nvirt_type = kvm\n" % extra
    if value is not None:
        text += "live_migration_permit_post_copy = %s\n" % value
    with open(real, "w") as handle:
        handle.write(text)


def oslo_reads(root, args):
    """What oslo.config itself makes of the files below root, for nova-compute started with args."""
    def inside(path):
        return os.path.join(root, path.lstrip("/"))

    mapped = [arg.split("=", 1)[0] + "=" + inside(arg.split("=", 1)[1]) if "=" in arg else (inside(arg) if arg.startswith("/") else arg) for arg in args]
    host = conf.Host(root)
    files, dirs = conf.default_files_and_dirs(host, HOME)
    opts = cfg.ConfigOpts()
    opts.register_opt(nova_option(), group=nova_group())
    opts(mapped, project="nova", prog="nova-compute", default_config_files=[inside(p) for p in files], default_config_dirs=[inside(p) for p in dirs])
    return opts.libvirt.live_migration_permit_post_copy


def _nova_definition():
    """The BoolOpt call for the option, and the OptGroup call of its group, from nova's nova/conf/libvirt.py."""
    tree = ast.parse(nova_parts.nova_libvirt_conf())
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)]
    option = [c for c in calls if c.func.attr == "BoolOpt" and c.args and getattr(c.args[0], "value", None) == conf.NAME]
    group = [c for c in calls if c.func.attr == "OptGroup"]
    assert len(option) == 1 and len(group) == 1
    return option[0], group[0]


def nova_option():
    """cfg.BoolOpt built from nova's own keywords (name, default, deprecated names; help left out)."""
    option, _group = _nova_definition()
    keywords = {kw.arg: ast.literal_eval(kw.value) for kw in option.keywords if kw.arg != "help"}
    return cfg.BoolOpt(conf.NAME, **keywords)


def nova_group():
    _option, group = _nova_definition()
    return group.args[0].value if group.args else ast.literal_eval([kw.value for kw in group.keywords if kw.arg == "name"][0])


def test_option_is_registered_as_nova_registers_it():
    option = nova_option()
    assert nova_group() == conf.GROUP
    assert option.default is conf.DEFAULT
    assert option.deprecated_opts == []  # no other name nova would also read it under


# The measured table of issue 15: nova.conf says false, the drop-in says true.
TABLE = [
    ("none", "false", True, DROPIN),
    ("file", "false", False, NOVA_CONF),
    ("file", None, True, DROPIN),
    ("file+dir", "false", True, DROPIN),
]


@pytest.mark.parametrize("args,nova_conf,expected,winner", TABLE)
def test_the_issue_table(tmp_path, args, nova_conf, expected, winner):
    root = str(tmp_path)
    write(root, NOVA_CONF, nova_conf)
    write(root, DROPIN, "true")
    host = conf.Host(root)
    got = conf.effective(host, conf.read_order(host, ARGS[args], HOME))
    assert (got["value"], got["file"]) == (expected, winner)
    assert oslo_reads(root, ARGS[args]) is expected
    assert conf.oslo_value(host, conf.read_order(host, ARGS[args], HOME), ARGS[args], HOME)[0] is expected


def test_the_winning_line_is_named(tmp_path):
    root = str(tmp_path)
    write(root, NOVA_CONF, "false", extra="\n".join("# comment %d" % n for n in range(10)))
    write(root, DROPIN, "true")
    host = conf.Host(root)
    got = conf.effective(host, conf.read_order(host, ARGS["file"], HOME))
    with open(os.path.join(root, NOVA_CONF.lstrip("/"))) as handle:
        assert handle.read().splitlines()[got["line"] - 1] == "live_migration_permit_post_copy = false"
    assert got["why"] == "--config-file"


VALUES = (None, "true", "false")


def test_every_combination_agrees_with_oslo_config(tmp_path):
    """nova.conf, nova-compute.conf, the drop-in and a later drop-in, each unset/true/false, under every way of starting."""
    checked = 0
    for index, values in enumerate(itertools.product(VALUES, repeat=4)):
        root = str(tmp_path / str(index))
        for path, value in zip((NOVA_CONF, COMPUTE_CONF, DROPIN, LOCAL), values):
            write(root, path, value)
        host = conf.Host(root)
        for args in ARGS.values():
            got = conf.effective(host, conf.read_order(host, args, HOME))
            assert got["value"] is oslo_reads(root, args), (values, args, got)
            checked += 1
    assert checked == 81 * len(ARGS)


def test_nova_compute_conf_overrides_nova_conf(tmp_path):
    root = str(tmp_path)
    write(root, NOVA_CONF, "false")
    write(root, COMPUTE_CONF, "true")
    write(root, DROPIN, "false")
    host = conf.Host(root)
    got = conf.effective(host, conf.read_order(host, ARGS["debian"], HOME))
    assert (got["value"], got["file"]) == (True, COMPUTE_CONF)
    assert oslo_reads(root, ARGS["debian"]) is True


def test_environment_wins_over_files(tmp_path):
    root = str(tmp_path)
    write(root, NOVA_CONF, "true")
    host = conf.Host(root)
    order = conf.read_order(host, ARGS["file"], HOME)
    got = conf.effective(host, order, env_value="false")
    assert got["value"] is False and got["file"] is None
    assert conf.oslo_value(host, order, ARGS["file"], HOME, env_value="false")[0] is False
    assert conf.ENV_NAME not in os.environ


@pytest.mark.parametrize("raw", ["TRUE", "On", "1", "yes", "no", "0", "Off", "False"])
def test_booleans_as_oslo_reads_them(tmp_path, raw):
    root = str(tmp_path)
    write(root, NOVA_CONF, raw)
    host = conf.Host(root)
    assert conf.effective(host, conf.read_order(host, ARGS["file"], HOME))["value"] is oslo_reads(root, ARGS["file"])


def test_a_value_nova_refuses_is_an_error_naming_the_line(tmp_path):
    root = str(tmp_path)
    write(root, NOVA_CONF, "maybe")
    host = conf.Host(root)
    with pytest.raises(conf.NovaConfError, match=r"^/etc/nova/nova.conf line \d+: .*not a boolean"):
        conf.effective(host, conf.read_order(host, ARGS["file"], HOME))


def test_missing_config_file_argument_is_an_error(tmp_path):
    with pytest.raises(conf.NovaConfError, match="--config-file /etc/nova/nova.conf does not exist"):
        conf.read_order(conf.Host(str(tmp_path)), ARGS["file"], HOME)


@pytest.mark.parametrize("value", [True, False])
@pytest.mark.parametrize("text", [
    "",
    "[DEFAULT]\ndebug = true\n",
    "[libvirt]\nvirt_type = kvm\n",
    "[LIBVIRT]\nlive_migration_permit_post_copy = maybe\n  continued\nvirt_type = kvm\n[vnc]\nenabled = true",
    "[libvirt]\nlive_migration_permit_post_copy = true\n[libvirt]\nlive_migration_permit_post_copy : false\n",
])
def test_set_option_changes_only_the_option(tmp_path, text, value):
    new = conf.set_option(text, value, "f")
    path = str(tmp_path / "nova.conf")
    with open(path, "w") as handle:
        handle.write(new)
    assert oslo_reads(str(tmp_path), ["--config-file=/nova.conf"]) is value
    others = [line for line in text.splitlines() if line.strip() and conf.NAME not in line and not line.startswith(" ")]
    assert [line for line in new.splitlines() if line in others] == others
    assert conf.set_option(new, value, "f") == new


# --------------------------------------------------------------------------------------------
# how nova-compute is started


@pytest.fixture(scope="module")
def debian_tree():
    return nova_parts.debian_nova_compute()


def debian_root(tmp_path, debian_tree, compute_conf):
    root = str(tmp_path / "host")
    subprocess.run(["cp", "-a", debian_tree, root], check=True)
    write(root, NOVA_CONF, "true")
    if compute_conf:
        write(root, COMPUTE_CONF, "false")
    return root


@pytest.mark.parametrize("compute_conf", [False, True])
def test_debian_unit_and_init_script(tmp_path, debian_tree, compute_conf):
    root = debian_root(tmp_path, debian_tree, compute_conf)
    found = start.unit_arguments(conf.Host(root))
    assert found["unit"] == "/lib/systemd/system/nova-compute.service"
    assert found["script"] == "/etc/init.d/nova-compute"
    wanted = ["--config-file=%s" % NOVA_CONF] + (["--config-file=%s" % COMPUTE_CONF] if compute_conf else [])
    assert [arg for arg in found["args"] if arg.startswith("--config")] == wanted
    assert start.debian_arguments(conf.Host(root)) == wanted


def test_debian_defaults_file_is_followed(tmp_path, debian_tree):
    root = debian_root(tmp_path, debian_tree, False)
    os.makedirs(os.path.join(root, "etc", "default"))
    with open(os.path.join(root, "etc", "default", "nova-compute"), "w") as handle:
        handle.write('DAEMON_ARGS="${DAEMON_ARGS} --config-dir=/etc/nova/nova.conf.d"\n')
    args = start.unit_arguments(conf.Host(root))["args"]
    assert [arg for arg in args if arg.startswith("--config")] == ["--config-file=%s" % NOVA_CONF, "--config-dir=/etc/nova/nova.conf.d"]


def test_unit_running_nova_compute_directly(tmp_path):
    root = str(tmp_path)
    unit = os.path.join(root, "etc", "systemd", "system")
    os.makedirs(os.path.join(unit, "nova-compute.service.d"))
    with open(os.path.join(unit, "nova-compute.service"), "w") as handle:
        handle.write("[Service]\nExecStart=/usr/bin/nova-compute --config-file=/etc/nova/nova.conf\n")
    with open(os.path.join(unit, "nova-compute.service.d", "override.conf"), "w") as handle:
        handle.write("[Service]\nExecStart=\nExecStart=/usr/bin/python3 /usr/bin/nova-compute --config-dir /etc/nova/d\n"
                     "Environment=OS_LIBVIRT__LIVE_MIGRATION_PERMIT_POST_COPY=false\n")
    found = start.unit_arguments(conf.Host(root))
    assert found["args"] == ["--config-dir", "/etc/nova/d"]
    assert found["environ"] == {conf.ENV_NAME: "false"}


def test_running_process_is_found(tmp_path):
    script = tmp_path / "nova-compute"
    script.write_text("import sys, time\nsys.stdout.write('up\\n'); sys.stdout.flush()\ntime.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, str(script), "--config-file", "nova.conf"], cwd=str(tmp_path), stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"up\n"
        found = start.process_arguments("/proc")
        assert found is not None and found["pid"] == proc.pid, found
        assert found["args"] == ["--config-file", "nova.conf"]
        assert found["cwd"] == str(tmp_path)
        assert found["contained"] is False
        # a relative --config-file is nova-compute's working directory's
        order = conf.read_order(conf.Host("/", {str(tmp_path / "nova.conf"): "[libvirt]\n"}), found["args"], HOME, found["cwd"])
        assert order[-1][0] == str(tmp_path / "nova.conf")
    finally:
        proc.kill()
        proc.wait(timeout=10)
        proc.stdout.close()
    deadline = time.time() + 5
    while start.process_arguments("/proc") is not None and time.time() < deadline:
        time.sleep(0.05)
    assert start.process_arguments("/proc") is None


def test_contained_process_is_told_apart(tmp_path, root):
    """A nova-compute with another root directory (here a chroot; a container's is the same to /proc) is not the host's."""
    script = tmp_path / "nova-compute"
    script.write_text("import os, sys, time\nos.chroot(sys.argv[1])\nsys.stdout.write('up\\n'); sys.stdout.flush()\ntime.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"up\n"
        found = start.process_arguments("/proc")
        assert found is not None and found["pid"] == proc.pid and found["contained"] is True, found
    finally:
        proc.kill()
        proc.wait(timeout=10)
        proc.stdout.close()
