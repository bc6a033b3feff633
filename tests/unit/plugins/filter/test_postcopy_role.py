# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The role's filters: the checks of its variables, the canary switch and its deprecated name, the
verdict, the grant plan, the peer groups and the decision.

The verdict and the grant plan are fed the facts of the real probe on this host (as root, as the
unprivileged test account with vm.unprivileged_userfaultfd=0, and under a seccomp filter denying
userfaultfd). What this host cannot be - a kernel without /dev/userfaultfd or the sysctl, a
libvirt that owns the device - is one field changed in those facts, and each such test says so.
The role's integration target (tests/integration/targets/role_postcopy) and the molecule scenarios
run the same filters through the role itself."""

import copy
import glob
import inspect
import json
import os
import subprocess
import sys

import hostctl
import pytest
import yaml
from ansible.errors import AnsibleFilterError
from ansible_collections.hypervisor.migration.plugins.filter import postcopy_role
from ansible_collections.hypervisor.migration.plugins.module_utils._facts import gather_postcopy_facts

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", "..", "..", ".."))
ROLE = os.path.join(REPO, "roles", "postcopy")
FILTERS = os.path.join(REPO, "plugins", "filter")
QEMU72 = "/usr/bin/qemu-system-x86_64"
SYSCTL = "vm.unprivileged_userfaultfd"


def role_yaml(*path):
    with open(os.path.join(ROLE, *path)) as handle:
        return yaml.safe_load(handle)


def role_defaults():
    return role_yaml("defaults", "main.yml")


def grant_fixes():
    return role_yaml("vars", "main.yml")["__postcopy_grant_fixes"]


# --------------------------------------------------------------------------------------------
# the variables' checks


PROBE_NAMES = ("postcopy_probe_user", "postcopy_qemu_binary", "postcopy_target_page_size", "postcopy_probe_timeout", "postcopy_memory_backends")
ENABLEMENT_NAMES = (
    "postcopy_grant_group",
    "postcopy_canary_memory_mb",
    "postcopy_canary_timeout",
    "postcopy_peer_group",
    "postcopy_consumers",
    "postcopy_fact_path",
    "postcopy_nova_conf_dir",
    "postcopy_kolla_config_dir",
    "postcopy_nova_service",
    "postcopy_report",
)
GROUPS = {"all": ["hv-1", "hv-2"], "ungrouped": [], "rack1": ["hv-1", "hv-2"], "rack2": ["hv-3"]}


def probe_settings(**changes):
    settings = dict((name, role_defaults()[name]) for name in PROBE_NAMES)
    settings.update(changes)
    return settings


def enablement_settings(**changes):
    settings = dict((name, role_defaults()[name]) for name in ENABLEMENT_NAMES)
    settings.update(postcopy_canary=None, postcopy_nova_config_files=None, postcopy_nova_config_dirs=None)
    settings.update(changes)
    return settings


def test_the_role_defaults_pass_both_checks():
    assert postcopy_role.probe_variable_errors(probe_settings()) == []
    assert postcopy_role.variable_errors(enablement_settings(), GROUPS, "hv-1") == []


@pytest.mark.parametrize("size", [1024, 4096, 65536, 1 << 30, "4096"])
def test_target_page_sizes_that_pass(size):
    assert postcopy_role.probe_variable_errors(probe_settings(postcopy_target_page_size=size)) == []


@pytest.mark.parametrize(
    "changes, errors",
    [
        ({"postcopy_target_page_size": 3000}, ["postcopy_target_page_size must be a power of two between 1024 and 1073741824, got 3000"]),
        ({"postcopy_target_page_size": 512}, ["postcopy_target_page_size must be a power of two between 1024 and 1073741824, got 512"]),
        ({"postcopy_target_page_size": 1 << 31}, ["postcopy_target_page_size must be a power of two between 1024 and 1073741824, got 2147483648"]),
        (
            {"postcopy_probe_timeout": 0, "postcopy_qemu_binary": "qemu-system-x86_64"},
            [
                'postcopy_qemu_binary must be auto or an absolute path, got "qemu-system-x86_64"',
                "postcopy_probe_timeout must be between 1 and 3600 seconds, got 0",
            ],
        ),
        ({"postcopy_probe_user": "  "}, ["postcopy_probe_user must be auto, an account name or a numeric uid, got an empty string"]),
        ({"postcopy_memory_backends": []}, ["postcopy_memory_backends must name at least one of anonymous, shmem, hugetlbfs, and nothing else"]),
        (
            {"postcopy_memory_backends": ["anonymous", "pmem"]},
            ["postcopy_memory_backends must name at least one of anonymous, shmem, hugetlbfs, and nothing else, got pmem"],
        ),
        ({"postcopy_probe_timeout": "soon"}, ["postcopy_probe_timeout must be between 1 and 3600 seconds, got soon"]),
    ],
)
def test_probe_variables_that_fail(changes, errors):
    assert postcopy_role.probe_variable_errors(probe_settings(**changes)) == errors


@pytest.mark.parametrize(
    "changes, errors",
    [
        ({"postcopy_report": "report.html"}, ['postcopy_report must be empty or an absolute path ending in .html, got "report.html"']),
        ({"postcopy_report": "/srv/.html"}, ['postcopy_report must be empty or an absolute path ending in .html, got "/srv/.html"']),
        ({"postcopy_peer_group": "no_such_group"}, ['postcopy_peer_group names no inventory group: "no_such_group"']),
        ({"postcopy_peer_group": "rack2"}, ['postcopy_peer_group "rack2" does not contain this host, hv-1']),
        (
            {"postcopy_fact_path": "facts.d", "postcopy_canary_timeout": 4000},
            ["postcopy_canary_timeout must be between 1 and 3600 seconds, got 4000", 'postcopy_fact_path must be an absolute path, got "facts.d"'],
        ),
        (
            {"postcopy_consumers": ["kolla"], "postcopy_kolla_config_dir": "kolla/config", "postcopy_nova_config_files": ["/etc/nova/nova.conf", "nova.conf"]},
            ['postcopy_nova_config_files must hold absolute paths, got "nova.conf"', 'postcopy_kolla_config_dir must be an absolute path, got "kolla/config"'],
        ),
        ({"postcopy_consumers": ["nova"], "postcopy_nova_conf_dir": "nova.conf.d"}, ['postcopy_nova_conf_dir must be an absolute path, got "nova.conf.d"']),
        ({"postcopy_canary_memory_mb": 8}, ["postcopy_canary_memory_mb must be between 16 and 65536 MiB, got 8"]),
        ({"postcopy_grant_group": "kvm users"}, ['postcopy_grant_group must be empty or a group name, got "kvm users"']),
        ({"postcopy_nova_service": "nova compute"}, ['postcopy_nova_service must be empty or a service name, got "nova compute"']),
        ({"postcopy_canary": "perhaps"}, ['postcopy_canary (deprecated, use postcopy_run_canary) must be true or false, got "perhaps"']),
    ],
)
def test_enablement_variables_that_fail(changes, errors):
    assert postcopy_role.variable_errors(enablement_settings(**changes), GROUPS, "hv-1") == errors


@pytest.mark.parametrize(
    "changes",
    [
        {"postcopy_grant_group": "libvirt-qemu"},
        {"postcopy_nova_service": "openstack-nova-compute@1.service"},
        {"postcopy_peer_group": "rack1"},
        {"postcopy_report": "/srv/reports/postcopy.html"},
        # A relative path for a consumer not in use is not read, so it passes.
        {"postcopy_consumers": [], "postcopy_fact_path": "facts.d"},
        {"postcopy_canary": True},
        {"postcopy_canary": "no"},
        # The canary's fact of the same name, injected as a variable, is not the switch.
        {"postcopy_canary": {"ok": True, "status": "completed"}},
    ],
)
def test_enablement_values_that_pass(changes):
    assert postcopy_role.variable_errors(enablement_settings(**changes), GROUPS, "hv-1") == []


def probe_module_errors(**changes):
    """What postcopy_facts itself says of the probe values (its own option names)."""
    from ansible_collections.hypervisor.migration.plugins.modules import postcopy_facts

    params = {"target_page_size": 4096, "timeout": 10, "probe_user": "auto", "qemu_binary": "auto", "memory_backends": ["anonymous"]}
    params.update(changes)
    return [error for error in postcopy_facts.option_errors(params) if error]


@pytest.mark.parametrize("size", [0, 512, 1000, 1024, 3000, 4096, 65536, 1 << 29, 1 << 30, (1 << 30) + 1024, 1 << 31])
def test_the_role_accepts_the_target_page_sizes_the_probe_accepts(size):
    role = postcopy_role.probe_variable_errors(probe_settings(postcopy_target_page_size=size))
    assert bool(role) == bool(probe_module_errors(target_page_size=size))


@pytest.mark.parametrize("timeout", [0, 1, 3600, 3601])
def test_the_role_accepts_the_probe_timeouts_the_probe_accepts(timeout):
    role = postcopy_role.probe_variable_errors(probe_settings(postcopy_probe_timeout=timeout))
    assert bool(role) == bool(probe_module_errors(timeout=timeout))


def test_the_roles_ranges_and_backends_are_the_modules():
    from ansible_collections.hypervisor.migration.plugins.module_utils import _canary
    from ansible_collections.hypervisor.migration.plugins.modules import postcopy_facts

    assert postcopy_role.CANARY_MEMORY_MB_RANGE == _canary.MEMORY_MB_RANGE
    assert postcopy_role.CANARY_TIMEOUT_RANGE == _canary.TIMEOUT_RANGE
    assert list(postcopy_role.MEMORY_BACKENDS) == postcopy_facts.ARGUMENT_SPEC["memory_backends"]["choices"]


def test_the_checks_read_the_variables_the_role_passes():
    """Each check task hands the filter exactly the variables the filter reads."""
    (probe_task,) = role_yaml("tasks", "validate_probe.yml")
    assert sorted(probe_task["vars"]["__postcopy_probe_settings"]) == sorted(PROBE_NAMES)
    (task,) = role_yaml("tasks", "validate.yml")
    # validate.yml hands over every postcopy_* variable: a consumer's own need no line there.
    assert "varnames', '^postcopy_'" in task["vars"]["__postcopy_names"]
    options = role_yaml("meta", "argument_specs.yml")["argument_specs"]["main"]["options"]
    assert set(ENABLEMENT_NAMES) | set(PROBE_NAMES) <= set(options)


def test_every_consumer_directory_must_be_absolute():
    options = role_yaml("meta", "argument_specs.yml")["argument_specs"]["main"]["options"]
    settings = dict((name, spec.get("default")) for name, spec in options.items())
    consumers = options["postcopy_consumers"]["choices"]
    for consumer in consumers:
        directories = postcopy_role._consumer_directories(consumer, settings)
        assert directories, "%s writes files but no directory of it is checked" % consumer
        for name in directories:
            bad = dict(settings, postcopy_consumers=[consumer], **{name: "relative/dir"})
            assert '%s must be an absolute path, got "relative/dir"' % name in postcopy_role.variable_errors(bad, GROUPS, "hv-1")


# --------------------------------------------------------------------------------------------
# the canary switch


@pytest.mark.parametrize("run_canary, fact", [(True, None), (False, None), ("yes", {"ok": True}), (False, {"ok": False})])
def test_the_switch_is_postcopy_run_canary_where_the_old_name_is_unset_or_the_fact(run_canary, fact):
    assert postcopy_role.canary_switch(run_canary, fact) is (run_canary in (True, "yes"))


def test_the_old_name_wins_and_is_deprecated(capfd):
    assert postcopy_role.canary_switch(False, True) is True
    assert postcopy_role.canary_switch(True, "no") is False
    err = capfd.readouterr().err
    assert err.count("[DEPRECATION WARNING]: The role variable postcopy_canary is deprecated: set postcopy_run_canary instead (") == 1
    assert "removed from collection 'hypervisor.migration' version 2.0.0" in err


def test_a_switch_that_is_no_boolean_is_one_line():
    with pytest.raises(AnsibleFilterError, match='^postcopy_run_canary must be true or false, got "maybe"$'):
        postcopy_role.canary_switch("maybe")


PLAY = """
- name: The deprecated switch in a play
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Resolve the switch twice
      ansible.builtin.set_fact:
        switch: "{{ postcopy_run_canary | hypervisor.migration.postcopy_canary_switch(postcopy_canary | default(none)) }}"
      loop: [1, 2]
    - name: Show it
      ansible.builtin.debug:
        msg: "switch={{ switch }}"
"""


def test_ansible_prints_the_deprecation_once_in_a_play(tmp_path):
    play = tmp_path / "play.yml"
    play.write_text(PLAY)
    playbook = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_DEPRECATION_WARNINGS="1")
    env["ANSIBLE_COLLECTIONS_PATH"] = os.pathsep.join(p for p in sys.path if os.path.isdir(os.path.join(p, "ansible_collections")))

    def run(*extra):
        command = [playbook, "-i", "localhost,", "-c", "local", str(play), "-e", "ansible_python_interpreter=" + sys.executable, "-e"]
        proc = subprocess.run(command + list(extra), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120, check=False)
        out = proc.stdout.decode()
        assert proc.returncode == 0, out
        return out

    old = run('{"postcopy_run_canary": false, "postcopy_canary": true}')
    assert '"msg": "switch=True"' in old
    assert old.count("[DEPRECATION WARNING]: The role variable postcopy_canary is deprecated") == 1, old
    new = run('{"postcopy_run_canary": true}')
    assert '"msg": "switch=True"' in new
    assert "DEPRECATION" not in new, new


# --------------------------------------------------------------------------------------------
# the verdict


@pytest.fixture(scope="module")
def root_facts():
    if os.geteuid() != 0:
        pytest.skip("needs root: probes as root")
    return gather_postcopy_facts({"qemu_binary": QEMU72})


@pytest.fixture(scope="module")
def sysctl_facts():
    """The unprivileged test account with vm.unprivileged_userfaultfd=0: userfaultfd missing for a cause a grant fixes."""
    if os.geteuid() != 0:
        pytest.skip("needs root: switches to the test account and sets the sysctl")
    user = hostctl.ensure_test_user()
    return hostctl.steady(lambda: gather_postcopy_facts({"probe_user": user.pw_name, "qemu_binary": QEMU72}), sysctl=0)


@pytest.fixture
def seccomp_facts(root, gather):
    return gather({"qemu_binary": QEMU72}, deny=["userfaultfd:EPERM"])["ansible_facts"]


def with_canary(facts, **canary):
    facts = copy.deepcopy(facts)
    facts["postcopy_canary"] = dict({"ok": True, "status": "completed", "total_time_ms": 812, "downtime_ms": 9, "error": None}, **canary)
    return facts


RAN = {"changed": False}
SKIPPED = {"changed": False, "skipped": True}


def test_a_supported_host_is_recorded_as_the_probe_saw_it(root_facts):
    facts = root_facts["postcopy"]
    verdict = postcopy_role.verdict(root_facts, peer_group="rack1")
    assert verdict["supported"] is True
    assert verdict["missing_features"] == [] and verdict["causes"] == []
    assert verdict["peer_group"] == "rack1"
    assert verdict["page_size"] == os.sysconf("SC_PAGE_SIZE") == facts["page_size"]
    assert (verdict["qemu_binary"], verdict["qemu_version"]) == (QEMU72, facts["qemu"]["version"])
    assert verdict["probe_user"] == "root" and verdict["kernel"] == os.uname().release
    assert verdict["access"] == facts["access"]["used"]
    assert verdict["hugepages_reserved"] == sorted(int(s) for s, c in facts["hugepage_sizes"].items() if c["total"] > 0)
    assert verdict["canary"] == {"ran": False, "ok": None, "status": None, "total_time_ms": None, "downtime_ms": None, "error": None}
    assert verdict["grant"] == {"method": "none", "note": ""}


def test_reserved_huge_page_sizes_are_those_with_pages(root_facts):
    # This host reserves none (other tests may, for a moment): the sizes are given here.
    facts = copy.deepcopy(root_facts)
    facts["postcopy"]["hugepage_sizes"] = {"1073741824": {"total": 2, "free": 2}, "2097152": {"total": 0, "free": 0}, "32768": {"total": 8, "free": 8}}
    assert postcopy_role.verdict(facts)["hugepages_reserved"] == [32768, 1073741824]


def test_a_failed_canary_makes_the_host_unsupported_with_its_message(root_facts):
    facts = with_canary(root_facts, ok=False, status="failed", error="timed out after 1 s waiting for the migration")
    verdict = postcopy_role.verdict(facts, run_canary=True, canary_result=RAN)
    assert verdict["supported"] is False
    assert verdict["missing_features"] == ["canary"]
    assert verdict["causes"] == [
        {
            "feature": "canary",
            "cause": "canary_failed",
            "detail": "The canary migration as root failed (migration status failed): timed out after 1 s waiting for the migration",
            "remedy": postcopy_role.CANARY_REMEDY,
        }
    ]
    assert verdict["canary"]["ran"] is True and verdict["canary"]["error"].startswith("timed out")


def test_a_passed_canary_is_recorded(root_facts):
    verdict = postcopy_role.verdict(with_canary(root_facts), run_canary=True, canary_result=RAN)
    assert verdict["supported"] is True
    assert verdict["canary"] == {"ran": True, "ok": True, "status": "completed", "total_time_ms": 812, "downtime_ms": 9, "error": None}


@pytest.mark.parametrize(
    "run_canary, result, ok",
    [
        (True, SKIPPED, False),  # the probe said no: the canary was skipped, its old fact is stale
        (False, RAN, False),  # switched off in this run: the result registered by an earlier run is stale
        (True, None, False),  # never registered
        (True, RAN, None),  # check mode's plan: no outcome
    ],
)
def test_a_canary_that_did_not_run_here_is_not_counted(root_facts, run_canary, result, ok):
    verdict = postcopy_role.verdict(with_canary(root_facts, ok=ok), run_canary=run_canary, canary_result=result)
    assert verdict["supported"] is True
    assert verdict["canary"]["ran"] is False and verdict["canary"]["ok"] is None


def test_the_grant_note_is_recorded_only_where_a_grant_was_asked_for(root_facts):
    grant = {"note": "postcopy_grant_access=device: nothing to grant"}
    assert postcopy_role.verdict(root_facts, grant_access="device", grant=grant)["grant"] == {"method": "device", "note": grant["note"]}
    assert postcopy_role.verdict(root_facts, grant_access="none", grant=grant)["grant"] == {"method": "none", "note": ""}


def test_seccomp_is_recorded_with_the_probes_causes(seccomp_facts):
    verdict = postcopy_role.verdict(seccomp_facts)
    assert verdict["supported"] is False
    assert verdict["missing_features"] == ["userfaultfd"]
    assert [c["cause"] for c in verdict["causes"]] == ["seccomp", "qemu_too_old_for_device"]


# --------------------------------------------------------------------------------------------
# the grant plan


def plan(facts, method):
    return postcopy_role.grant_plan(facts, method, grant_fixes(), SYSCTL)


def test_the_sysctl_grant_applies_where_the_sysctl_refuses_the_account(sysctl_facts):
    assert sysctl_facts["postcopy_supported"] is False
    grant = plan(sysctl_facts, "sysctl")
    assert grant == {"method": "sysctl", "applies": True, "note": "", "cause": "unprivileged_userfaultfd_sysctl", "sysctl_value": 0, "changed": False}


def test_the_device_grant_says_qemu_before_8_never_opens_the_device(sysctl_facts):
    version = sysctl_facts["postcopy"]["qemu"]["version"]
    assert not sysctl_facts["postcopy"]["qemu"]["uses_device"]
    grant = plan(sysctl_facts, "device")
    assert grant["applies"] is False
    assert grant["note"] == (
        "postcopy_grant_access=device: QEMU %s never opens /dev/userfaultfd (QEMU 8.0 and newer do), so granting the device would not enable "
        "post-copy; nothing was changed. Upgrade QEMU to 8.0 or newer, or use postcopy_grant_access=sysctl." % version
    )


def test_no_grant_where_root_can_already_do_it(root_facts):
    assert plan(root_facts, "sysctl") == {
        "method": "sysctl",
        "applies": False,
        "note": "",
        "cause": None,
        "sysctl_value": root_facts["postcopy"]["sysctl"][SYSCTL],
        "changed": False,
    }


def test_a_grant_cannot_fix_seccomp_and_says_what_can(seccomp_facts):
    grant = plan(seccomp_facts, "sysctl")
    assert grant["applies"] is False
    assert grant["note"] == "postcopy_grant_access=sysctl: QEMU's account is root, so a grant cannot help; nothing was changed."
    # As QEMU's own account would be denied by the same filter (the probe ran as root here).
    not_root = copy.deepcopy(seccomp_facts)
    not_root["postcopy"]["probe_user"]["uid"] = 64055
    seccomp = not_root["postcopy"]["causes"][0]
    assert seccomp["cause"] == "seccomp"
    grant = plan(not_root, "sysctl")
    assert (grant["applies"], grant["cause"]) == (False, "seccomp")
    assert grant["note"] == "postcopy_grant_access=sysctl cannot fix cause seccomp; nothing was changed. " + seccomp["remedy"]
    assert "never opens /dev/userfaultfd" in plan(not_root, "device")["note"]


def test_a_grant_the_account_already_uses_is_kept(sysctl_facts):
    # As after an earlier sysctl grant: the account gets its userfaultfd through vm.unprivileged_userfaultfd=1.
    facts = copy.deepcopy(sysctl_facts)
    facts["postcopy_supported"], facts["postcopy_missing_features"], facts["postcopy"]["causes"] = True, [], []
    facts["postcopy"]["access"]["used"] = "syscall"
    facts["postcopy"]["sysctl"][SYSCTL] = 1
    grant = plan(facts, "sysctl")
    assert (grant["applies"], grant["cause"], grant["note"]) == (True, None, "")


def test_what_a_grant_cannot_fix_on_an_account_that_has_userfaultfd(sysctl_facts):
    # The account has userfaultfd; something else is missing (a target page size the host cannot back).
    facts = copy.deepcopy(sysctl_facts)
    facts["postcopy_missing_features"] = ["target_page_size"]
    facts["postcopy"]["causes"] = [{"feature": "target_page_size", "cause": "page_size", "detail": "", "remedy": ""}]
    facts["postcopy"]["sysctl"][SYSCTL] = 1
    grant = plan(facts, "sysctl")
    assert grant["note"] == (
        "postcopy_grant_access=sysctl: QEMU's account already gets a userfaultfd, and a grant cannot fix what is missing (target_page_size); "
        "nothing was changed."
    )
    assert grant["applies"] is False


@pytest.mark.parametrize(
    "method, change, note",
    [
        # A kernel before 6.1 (this one has the device).
        (
            "device",
            lambda p: p["access"]["device"].update(present=False),
            "postcopy_grant_access=device: this kernel ({kernel}) has no /dev/userfaultfd (it needs 6.1 or newer); nothing was changed. "
            "Use postcopy_grant_access=sysctl, or boot a newer kernel.",
        ),
        # A kernel without the sysctl (before 5.2).
        (
            "sysctl",
            lambda p: p["sysctl"].update({SYSCTL: None}),
            "postcopy_grant_access=sysctl: this kernel has no vm.unprivileged_userfaultfd; nothing was changed.",
        ),
        # libvirt 10.1 or newer, which gives each domain its own device (no libvirt daemon runs here).
        (
            "device",
            lambda p: (p["qemu"].update(uses_device=True), p["launcher"].update(version="11.3.0"), p["launcher"]["device_path"].update(libvirt_grants=True)),
            "postcopy_grant_access=device: libvirt 11.3.0 already gives QEMU its own /dev/userfaultfd in each domain's private /dev; "
            "nothing to grant, nothing was changed.",
        ),
        # libvirt before 10.1, whose private /dev a host rule cannot reach.
        (
            "device",
            lambda p: (p["qemu"].update(uses_device=True), p["launcher"]["device_path"].update(host_grant_helps=False, reason="libvirt 9.0 predates 10.1")),
            "postcopy_grant_access=device: a grant of the host's /dev/userfaultfd cannot reach QEMU here (libvirt 9.0 predates 10.1); "
            "nothing was changed. {last_remedy}",
        ),
    ],
)
def test_preconditions_a_host_must_meet_before_a_grant(sysctl_facts, method, change, note):
    facts = copy.deepcopy(sysctl_facts)
    change(facts["postcopy"])
    grant = plan(facts, method)
    assert grant["applies"] is False
    kernel, last_remedy = facts["postcopy"]["kernel"], facts["postcopy"]["causes"][-1]["remedy"]
    assert grant["note"] == note.format(kernel=kernel, last_remedy=last_remedy)


def test_an_unknown_method_is_one_line(root_facts):
    with pytest.raises(AnsibleFilterError, match='^postcopy_grant_plan: method must be one of device, sysctl, got "none"$'):
        plan(root_facts, "none")


def test_the_grant_fixes_are_causes_the_probe_reports():
    from ansible_collections.hypervisor.migration.plugins.module_utils import _diagnose

    fixes = grant_fixes()
    assert set(fixes) == {"device", "sysctl"}
    assert set(sum(fixes.values(), [])) <= set(_diagnose.REMEDIES)


# --------------------------------------------------------------------------------------------
# peer groups and the decision


def recorded(group, **changes):
    verdict = {"supported": True, "missing_features": [], "causes": [], "peer_group": group, "page_size": 4096, "hugepages_reserved": []}
    verdict.update(changes)
    return {"__postcopy_verdict": verdict}


SECCOMP = {"feature": "userfaultfd", "cause": "seccomp", "detail": "blocked", "remedy": "allow it"}


def rack():
    """The integration target's rack: one member per way to hold a group back."""
    hostvars = {
        "hv-1": recorded("rack"),
        "hv-4k": recorded("rack"),
        "hv-64k": recorded("rack", page_size=65536),
        "hv-huge": recorded("rack", hugepages_reserved=[2097152, 1073741824]),
        "hv-seccomp": recorded("rack", supported=False, missing_features=["userfaultfd"], causes=[SECCOMP]),
        "hv-unprobed": {},
        "hv-pair": recorded("pair"),
    }
    groups = {"rack": ["hv-1", "hv-4k", "hv-64k", "hv-huge", "hv-seccomp", "hv-unprobed"], "pair": ["hv-1", "hv-pair"]}
    return hostvars, groups


def test_every_member_that_differs_holds_the_group_back_with_its_reason():
    hostvars, groups = rack()
    judged = postcopy_role.judge_peer_groups(hostvars, ["hv-1", "hv-pair"], groups)
    assert sorted(judged) == ["pair", "rack"]
    assert judged["rack"] == {
        "members": groups["rack"],
        "ok": False,
        "held_back_by": [
            {"host": "hv-64k", "reason": "host page size 64 KiB differs from 4 KiB on most members"},
            {"host": "hv-huge", "reason": "reserved huge page sizes 2 MiB, 1 GiB differ from none on most members"},
            {"host": "hv-seccomp", "reason": "cannot do post-copy: missing userfaultfd (seccomp)"},
            {"host": "hv-unprobed", "reason": "no verdict in this play: not targeted, limited out or unreachable"},
        ],
    }
    # hv-1's verdict names rack; hv-pair's names pair, where both members agree.
    assert judged["pair"] == {"members": ["hv-1", "hv-pair"], "ok": True, "held_back_by": []}


def test_only_groups_named_by_a_play_hosts_verdict_are_judged():
    hostvars, groups = rack()
    assert list(postcopy_role.judge_peer_groups(hostvars, ["hv-pair"], groups)) == ["pair"]
    assert postcopy_role.judge_peer_groups(hostvars, ["hv-unprobed"], groups) == {}


def test_a_tie_goes_to_the_first_member():
    hostvars = {"a": recorded("g", page_size=65536), "b": recorded("g")}
    judged = postcopy_role.judge_peer_groups(hostvars, ["a", "b"], {"g": ["a", "b"]})
    assert judged["g"]["held_back_by"] == [{"host": "b", "reason": "host page size 4 KiB differs from 64 KiB on most members"}]


def test_one_member_with_several_reasons_has_them_on_one_line():
    odd = recorded("g", supported=False, missing_features=["userfaultfd", "uffdio_copy"], causes=[SECCOMP], page_size=16384)
    hostvars = {"a": recorded("g"), "b": recorded("g"), "c": odd}
    (held,) = postcopy_role.judge_peer_groups(hostvars, ["a"], {"g": ["a", "b", "c"]})["g"]["held_back_by"]
    assert held == {
        "host": "c",
        "reason": "cannot do post-copy: missing userfaultfd (seccomp), uffdio_copy; host page size 16 KiB differs from 4 KiB on most members",
    }


@pytest.mark.parametrize("size, text", [(4096, "4 KiB"), (65536, "64 KiB"), (2097152, "2 MiB"), (1 << 30, "1 GiB"), (3 << 30, "3 GiB"), (1000, "1000 B")])
def test_sizes_are_written_in_the_largest_whole_unit(size, text):
    assert postcopy_role.size_text(size) == text


def test_the_decision_and_its_reason():
    hostvars, groups = rack()
    judged = postcopy_role.judge_peer_groups(hostvars, ["hv-1", "hv-pair"], groups)
    alone = postcopy_role.decision(recorded("")["__postcopy_verdict"], judged)
    assert alone == {"enabled": True, "held_back_by": [], "reason": "QEMU can do post-copy here."}
    paired = postcopy_role.decision(hostvars["hv-pair"]["__postcopy_verdict"], judged)
    assert paired["enabled"] is True and paired["held_back_by"] == []
    assert paired["reason"] == "QEMU can do post-copy here and on every member of peer group pair, with the same page sizes."
    held = postcopy_role.decision(hostvars["hv-1"]["__postcopy_verdict"], judged)
    assert held["enabled"] is False and held["held_back_by"] == judged["rack"]["held_back_by"]
    assert held["reason"] == (
        "QEMU can do post-copy here, but peer group rack is held back by hv-64k (host page size 64 KiB differs from 4 KiB on most members), "
        "hv-huge (reserved huge page sizes 2 MiB, 1 GiB differ from none on most members), hv-seccomp (cannot do post-copy: missing userfaultfd (seccomp)), "
        "hv-unprobed (no verdict in this play: not targeted, limited out or unreachable)."
    )
    unsupported = postcopy_role.decision(hostvars["hv-seccomp"]["__postcopy_verdict"], judged)
    assert unsupported["enabled"] is False
    assert unsupported["reason"] == "QEMU cannot do post-copy here: missing userfaultfd (seccomp)."


def test_a_group_not_judged_is_one_line():
    with pytest.raises(AnsibleFilterError, match='^postcopy_decision: peer group "elsewhere" was not judged in this play$'):
        postcopy_role.decision(recorded("elsewhere")["__postcopy_verdict"], {})


@pytest.mark.parametrize(
    "call",
    [
        lambda: postcopy_role.probe_variable_errors(["postcopy_probe_user"]),
        lambda: postcopy_role.variable_errors("postcopy_report", {}, "hv-1"),
        lambda: postcopy_role.verdict("facts"),
        lambda: postcopy_role.judge_peer_groups({}, "hv-1", {}),
        lambda: postcopy_role.decision(None, {}),
        lambda: postcopy_role.report_data({}, "hv-1", []),
    ],
)
def test_bad_input_is_one_line(call):
    with pytest.raises(AnsibleFilterError, match="^postcopy_[a-z_]+: expected"):
        call()


# --------------------------------------------------------------------------------------------
# the report


NOVA_RESULT = {
    "changed": False,
    "nova": {"value": True, "file": "/etc/nova/nova.conf.d/50-hypervisor-migration-postcopy.conf", "line": 3, "why": "drop-in", "evaluator": "oslo"},
}


def reported_host(group, enabled, **changes):
    host_vars = recorded(group, **changes)
    host_vars.update(postcopy_enabled=enabled, __postcopy_held_back_by=[], __postcopy_reason="QEMU can do post-copy here.")
    return host_vars


def test_the_report_has_a_row_per_play_host_and_the_counts():
    hostvars = {
        "hv-a": dict(reported_host("", True), __postcopy_nova=NOVA_RESULT, __postcopy_kolla={"skipped": True}),
        "hv-b": reported_host("", False, supported=False, missing_features=["userfaultfd", "shiny"], causes=[SECCOMP]),
        "hv-c": {"postcopy_enabled": False},
        "hv-d": reported_host("", False, supported=False, missing_features=["canary", "userfaultfd"]),
    }
    data = postcopy_role.report_data(hostvars, ["hv-a", "hv-b", "hv-c", "hv-d"], ["userfaultfd", "uffdio_api", "canary"], "Readiness", {"g": {}})
    assert (data["title"], data["play"], data["peer_groups"]) == ("Post-copy live migration readiness", "Readiness", {"g": {}})
    assert data["summary"] == {"hosts": 4, "supported": 1, "enabled": 1, "no_verdict": 1}
    # The ids in feature_ids' order; the role's list is held to the probe's (test_role_vocabulary.py).
    assert data["features"] == ["userfaultfd", "canary"]
    a, b, c, d = data["hosts"]
    assert (a["host"], a["verdict"], a["enabled"], a["supported"], a["peer_group"]) == ("hv-a", True, True, True, "")
    assert a["nova"] == {k: NOVA_RESULT["nova"][k] for k in ("value", "file", "line", "why", "evaluator")}
    assert a["kolla"] is None and b["nova"] is None
    # What the verdict lacks comes from the defaults.
    assert a["canary"]["ran"] is False and a["grant"] == {"method": "none", "note": ""} and a["qemu_version"] is None
    assert b["missing_features"] == ["userfaultfd", "shiny"] and b["causes"] == [SECCOMP]
    assert c == {"host": "hv-c", "verdict": False, "supported": None, "enabled": None, "reason": "no verdict: the role did not finish probing this host"}
    assert d["enabled"] is False and d["reason"] == "QEMU can do post-copy here."


def test_the_report_rows_do_not_share_the_defaults():
    data = postcopy_role.report_data({"a": reported_host("", True), "b": reported_host("", True)}, ["a", "b"], [])
    data["hosts"][0]["canary"]["ran"] = True
    assert data["hosts"][1]["canary"]["ran"] is False and postcopy_role._ROW_DEFAULTS["canary"]["ran"] is False


# --------------------------------------------------------------------------------------------
# registration and documentation


def test_every_filter_is_registered_and_documented_with_its_arguments():
    filters = postcopy_role.FilterModule().filters()
    documented = set()
    for path in glob.glob(os.path.join(FILTERS, "*.yml")):
        with open(path) as handle:
            doc = yaml.safe_load(handle)["DOCUMENTATION"]
        documented.add(doc["name"])
        if doc["name"] not in filters:
            continue
        assert os.path.basename(path) == doc["name"] + ".yml"
        parameters = list(inspect.signature(filters[doc["name"]]).parameters)
        assert sorted(doc["options"]) == sorted(["_input"] + parameters[1:]), doc["name"]
        if "positional" in doc:
            assert [name.strip() for name in doc["positional"].split(",")] == ["_input"] + parameters[1 : len(doc["positional"].split(","))]
    assert set(filters) <= documented


def test_the_role_computes_nothing_in_templates():
    """Only the files the role writes are templates; no task builds data in Jinja and parses it back."""
    templates = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROLE, "templates", "*.j2")))
    assert templates == ["report.html.j2", "userfaultfd-sysctl.conf.j2", "userfaultfd.rules.j2"]
    for path in glob.glob(os.path.join(ROLE, "tasks", "*.yml")):
        with open(path) as handle:
            text = handle.read()
        assert "errors.append" not in text and "from_json" not in text and "lookup('ansible.builtin.template'" not in text, path


def test_the_deprecated_switch_is_documented_as_such():
    options = role_yaml("meta", "argument_specs.yml")["argument_specs"]["main"]["options"]
    assert options["postcopy_run_canary"]["type"] == "bool" and options["postcopy_run_canary"]["default"] is False
    alias = options["postcopy_canary"]
    # raw: the canary's fact of the same name, a mapping, reaches the role's argument validation too.
    assert alias["type"] == "raw" and "default" not in alias
    assert "Deprecated" in alias["description"][0] and postcopy_role.CANARY_SWITCH_ALIAS_REMOVED_IN in alias["description"][0]
    assert "postcopy_canary" not in role_defaults()
    assert json.dumps(role_defaults()["postcopy_run_canary"]) == "false"
