# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""postcopy_nova_config on a copy of a Debian nova-compute host (issue 15).

The host is Debian's nova-compute package unpacked below the test's directory (its systemd unit
and its init script, never run), with a nova.conf, read through the module's root option; proc
points at an empty directory, so no running nova-compute is found. oslo.config (PyPI) reads the
files afterwards as nova-compute would.
"""

from __future__ import absolute_import, division, print_function

import glob
import os
import subprocess

import nova_parts
import pytest
from ansible_collections.hypervisor.migration.plugins.modules import postcopy_nova_config
from module_main import run_module_main
from oslo_config import cfg

DROPIN = "/etc/nova/nova.conf.d/50-hypervisor-migration-postcopy.conf"
NOVA_CONF = "etc/nova/nova.conf"
COMPUTE_CONF = "etc/nova/nova-compute.conf"


def nova_text(value):
    return "[DEFAULT]\ndebug = false\n\n[libvirt]\nvirt_type = kvm\nlive_migration_permit_post_copy = %s\ncpu_mode = host-model\n" % value


@pytest.fixture(scope="module")
def debian_tree():
    return nova_parts.debian_nova_compute()


@pytest.fixture
def host(tmp_path, debian_tree):
    root = str(tmp_path / "host")
    subprocess.run(["cp", "-a", debian_tree, root], check=True)
    with open(os.path.join(root, NOVA_CONF), "w") as handle:
        handle.write(nova_text("true"))
    os.makedirs(str(tmp_path / "proc"))
    return root


def run(capsys, tmp_path, root, **args):
    args = dict({"value": False, "dropin": DROPIN, "root": root, "proc": str(tmp_path / "proc")}, **args)
    return run_module_main(postcopy_nova_config.main, args, capsys)


def nova_uses(root, compute_conf=False):
    opts = cfg.ConfigOpts()
    opts.register_opt(cfg.BoolOpt("live_migration_permit_post_copy", default=False), group="libvirt")
    files = [NOVA_CONF] + ([COMPUTE_CONF] if compute_conf else [])
    dropins = os.path.join(root, "etc", "nova", "nova.conf.d")
    opts(["--config-file=%s" % os.path.join(root, path) for path in files], project="nova", prog="nova-compute",
         default_config_files=[], default_config_dirs=[dropins] if os.path.isdir(dropins) else [])
    return opts.libvirt.live_migration_permit_post_copy


def snapshot(root):
    found = {}
    for directory, _dirs, names in os.walk(root):
        for name in names:
            path = os.path.join(directory, name)
            if not os.path.islink(path):
                with open(path, "rb") as handle:
                    found[path] = handle.read()
    return found


def test_debian_host_conflict_fails_naming_the_line(capsys, tmp_path, host):
    before = snapshot(host)
    result = run(capsys, tmp_path, host)
    assert result["rc"] == 1
    wanted = "/etc/nova/nova.conf line 6 sets [libvirt] live_migration_permit_post_copy = true and nova-compute reads it after %s" % DROPIN
    assert result["msg"].startswith(wanted)
    assert "\n" not in result["msg"]
    assert result["nova"]["conflict"] == {"file": "/etc/nova/nova.conf", "line": 6, "value": True}
    assert snapshot(host) == before


def test_debian_host_started_by_its_unit_and_script(capsys, tmp_path, host):
    result = run(capsys, tmp_path, host, value=True)
    assert result["rc"] == 0 and result["changed"] is False
    nova = result["nova"]
    assert nova["started_by"]["source"] == "systemd"
    assert nova["started_by"]["script"] == "/etc/init.d/nova-compute"
    assert nova["config_files"] == ["/etc/nova/nova.conf"] and nova["config_dirs"] == []
    # the drop-in is read before nova.conf, which therefore wins with the same value
    assert [source["path"] for source in nova["sources"]] == [DROPIN, "/etc/nova/nova.conf"]
    assert (nova["value"], nova["file"], nova["line"]) == (True, "/etc/nova/nova.conf", 6)
    assert nova["evaluator"].startswith("oslo.config ")


def test_override_in_check_mode_shows_the_diff_and_writes_nothing(capsys, tmp_path, host):
    before = snapshot(host)
    result = run(capsys, tmp_path, host, conflicts="override", _ansible_check_mode=True, _ansible_diff=True)
    assert result["rc"] == 0 and result["changed"] is True
    assert result["diff"] == [{"before_header": "/etc/nova/nova.conf", "after_header": "/etc/nova/nova.conf",
                               "before": nova_text("true"), "after": nova_text("false")}]
    assert result["nova"]["value"] is False
    assert snapshot(host) == before


def test_override_changes_one_line_keeps_a_backup_and_is_idempotent(capsys, tmp_path, host):
    mode = os.stat(os.path.join(host, NOVA_CONF)).st_mode
    first = run(capsys, tmp_path, host, conflicts="override")
    assert first["rc"] == 0 and first["changed"] is True
    with open(os.path.join(host, NOVA_CONF)) as handle:
        assert handle.read() == nova_text("false")
    assert os.stat(os.path.join(host, NOVA_CONF)).st_mode == mode
    backups = glob.glob(os.path.join(host, NOVA_CONF) + ".*~")
    assert len(backups) == 1 and first["nova"]["backup_files"] == backups
    with open(backups[0]) as handle:
        assert handle.read() == nova_text("true")
    assert nova_uses(host) is False
    second = run(capsys, tmp_path, host, conflicts="override")
    assert second["rc"] == 0 and second["changed"] is False
    assert glob.glob(os.path.join(host, NOVA_CONF) + ".*~") == backups


def test_nova_compute_conf_is_the_file_that_wins(capsys, tmp_path, host):
    with open(os.path.join(host, COMPUTE_CONF), "w") as handle:
        handle.write(nova_text("true"))
    result = run(capsys, tmp_path, host, conflicts="override")
    assert result["rc"] == 0
    assert result["nova"]["config_files"] == ["/etc/nova/nova.conf", "/etc/nova/nova-compute.conf"]
    assert result["nova"]["conflict"]["file"] == "/etc/nova/nova-compute.conf"
    with open(os.path.join(host, NOVA_CONF)) as handle:
        assert handle.read() == nova_text("true")  # read before nova-compute.conf: left alone
    assert nova_uses(host, compute_conf=True) is False


def test_a_symlink_that_wins_is_not_replaced(capsys, tmp_path, host):
    target = os.path.join(host, "etc", "nova", "real.conf")
    os.rename(os.path.join(host, NOVA_CONF), target)
    os.symlink(target, os.path.join(host, NOVA_CONF))
    result = run(capsys, tmp_path, host, conflicts="override")
    assert result["rc"] == 1
    assert result["msg"] == "/etc/nova/nova.conf is not a regular file (a symlink?): refusing to replace it"
    with open(target) as handle:
        assert handle.read() == nova_text("true")


def test_drop_in_directory_nova_does_not_read(capsys, tmp_path, host):
    result = run(capsys, tmp_path, host, value=True, dropin="/srv/nova.d/50.conf", config_files=["/etc/nova/nova.conf"], config_dirs=[])
    assert result["rc"] == 0  # nova.conf already says true
    os.makedirs(os.path.join(host, "etc", "nova", "nova.conf.d"))
    with open(os.path.join(host, NOVA_CONF), "w") as handle:
        handle.write("[libvirt]\n")
    result = run(capsys, tmp_path, host, value=True, dropin="/srv/nova.d/50.conf", config_files=["/etc/nova/nova.conf"], config_dirs=[])
    assert result["rc"] == 1
    assert result["msg"].startswith("nova-compute does not read /srv/nova.d/50.conf")


@pytest.mark.parametrize("args, message", [
    ({"dropin": "nova.conf.d/50.conf"}, "dropin must be an absolute path, got 'nova.conf.d/50.conf'"),
    ({"dropin": None}, "layout nova needs dropin"),
    ({"layout": "kolla"}, "layout kolla needs kolla_config_dir and kolla_host"),
    ({"layout": "kolla", "kolla_config_dir": "/etc/kolla/config", "kolla_host": "../x"}, "kolla_host must be an inventory host name, got '../x'"),
    ({"conflicts": "ignore"}, "value of conflicts must be one of: fail, override, got: ignore"),
    ({"config_files": ["/etc/nova/missing.conf"]}, "nova-compute's --config-file /etc/nova/missing.conf does not exist: nova-compute would not start"),
])
def test_bad_input_is_one_line(capsys, tmp_path, host, args, message):
    result = run(capsys, tmp_path, host, **args)
    assert result["rc"] == 1
    assert result["msg"] == message


def test_drop_in_directory_the_role_creates(capsys, tmp_path, host):
    dropin = "/etc/nova/new.conf.d/50.conf"
    result = run(capsys, tmp_path, host, value=False, dropin=dropin, config_files=["/etc/nova/nova.conf"], config_dirs=["/etc/nova/new.conf.d"])
    assert result["rc"] == 0, result
    assert (result["nova"]["value"], result["nova"]["file"]) == (False, dropin)
    assert result["nova"]["before"]["value"] is True
    assert not os.path.exists(os.path.join(host, "etc", "nova", "new.conf.d"))


def kolla_tree(tmp_path, later):
    """A kolla-ansible node_custom_config with an operator's per-host nova.conf, and a per-host nova-compute.conf."""
    base = tmp_path / "kolla"
    (base / "nova" / "hv1").mkdir(parents=True)
    (base / "nova" / "hv1" / "nova.conf").write_text("[DEFAULT]\ndebug = true\n")
    (base / "nova" / "hv1" / "nova-compute.conf").write_text(nova_text(later))
    return str(base)


def test_kolla_file_merged_later_fails_before_anything_is_written(capsys, tmp_path):
    base = kolla_tree(tmp_path, "true")
    before = snapshot(base)
    result = run_module_main(postcopy_nova_config.main, {"layout": "kolla", "value": False, "kolla_config_dir": base, "kolla_host": "hv1"}, capsys)
    assert result["rc"] == 1
    assert result["msg"].startswith("%s/nova/hv1/nova-compute.conf line 6 sets [libvirt] live_migration_permit_post_copy = true" % base)
    assert snapshot(base) == before


def test_kolla_sets_the_option_keeping_the_rest(capsys, tmp_path):
    base = kolla_tree(tmp_path, "true")
    args = {"layout": "kolla", "value": False, "kolla_config_dir": base, "kolla_host": "hv1", "conflicts": "override"}
    result = run_module_main(postcopy_nova_config.main, args, capsys)
    assert result["rc"] == 0 and result["changed"] is True
    with open(os.path.join(base, "nova", "hv1", "nova.conf")) as handle:
        assert handle.read() == "[DEFAULT]\ndebug = true\n\n[libvirt]\nlive_migration_permit_post_copy = false\n"
    with open(os.path.join(base, "nova", "hv1", "nova-compute.conf")) as handle:
        assert handle.read() == nova_text("false")
    assert (result["nova"]["value"], result["nova"]["file"]) == (False, os.path.join(base, "nova", "hv1", "nova-compute.conf"))
    assert run_module_main(postcopy_nova_config.main, args, capsys)["changed"] is False
