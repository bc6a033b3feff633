# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Bad input: every option of both modules and every role variable fuzzed through the real argument handling.

Each example changes one option of an otherwise default call and knows, from an oracle written
here independently of the module, whether the value must be accepted, must be refused, or may
be either (a type Ansible may or may not convert). The module runs through AnsibleModule
(``patch_module_args``). A refused value must end the task with one line that names the option,
before anything touches the host: no fork, no process, no file. An accepted value must give
the facts. Role variables go through ArgumentSpecValidator, the engine behind
``ansible.builtin.validate_argument_spec``, against roles/postcopy/meta/argument_specs.yml, and
a sample of them through ``validate_argument_spec`` itself in a real play.
"""

import contextlib
import decimal
import io
import json
import os
import pwd
import re
import stat
import subprocess
import sys
import tempfile
from unittest import mock

import pytest
import yaml
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.module_utils.testing import patch_module_args
from ansible_collections.hypervisor.migration.plugins.module_utils import _canary, _facts
from ansible_collections.hypervisor.migration.plugins.module_utils._ffi import BACKEND_CHOICES, HAS_CFFI
from ansible_collections.hypervisor.migration.plugins.modules import postcopy_canary, postcopy_facts
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
ROLE_SPEC = os.path.join(REPO, "roles", "postcopy", "meta", "argument_specs.yml")
EXAMPLES = int(os.environ.get("HVM_FUZZ_EXAMPLES", "100"))
# The same examples on every CI run (HVM_FUZZ_RANDOM=1 explores new ones, HVM_FUZZ_EXAMPLES=1000 more of them).
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=not os.environ.get("HVM_FUZZ_RANDOM"),
                suppress_health_check=[HealthCheck.too_slow])
COUNTS = {}

# --------------------------------------------------------------------------------------------
# files qemu_binary may name, made once


def _file(path, text, mode):
    with open(path, "w") as handle:
        handle.write(text)
    os.chmod(path, mode)
    return path


@pytest.fixture(scope="module")
def binaries(tmp_path_factory):
    base = str(tmp_path_factory.mktemp("binaries"))
    os.chmod(base, 0o755)
    banner = "#!/bin/sh\necho 'QEMU emulator version 9.1.0'\n"
    paths = {
        "stand_in": _file(os.path.join(base, "qemu-system-x86_64"), banner, 0o755),
        "not_executable": _file(os.path.join(base, "qemu-not-exec"), banner, 0o644),
        "world_writable": _file(os.path.join(base, "qemu-ww"), banner, 0o757),
        # No banner: the module must run it (as a list, no shell) to ask its version.
        "shell_name": _file(os.path.join(base, "qemu;touch pwned;$(touch pwned2)"), "#!/bin/sh\necho no banner\n", 0o755),
        "directory": base,
    }
    os.symlink(paths["stand_in"], os.path.join(base, "link-ok"))
    os.symlink(paths["world_writable"], os.path.join(base, "link-ww"))
    os.symlink(os.path.join(base, "nowhere"), os.path.join(base, "link-dangling"))
    paths.update(link_ok=os.path.join(base, "link-ok"), link_ww=os.path.join(base, "link-ww"), dangling=os.path.join(base, "link-dangling"))
    return paths


# --------------------------------------------------------------------------------------------
# oracles: what the module must make of a value, worked out without the module's code


def _text_unusable(text):
    if any(ord(char) < 32 or ord(char) == 127 for char in text):
        return True
    try:
        text.encode(sys.getfilesystemencoding(), "surrogateescape")
    except UnicodeError:
        return True
    return False


def account_valid(value):
    if not isinstance(value, str):
        return None
    if not value.strip() or _text_unusable(value):
        return False
    text = value.strip()
    if text == "auto":
        return True
    try:
        # Only ASCII digits make a uid; "٣" or "²" are names (and no account has them).
        if re.match(r"^\+?[0-9]+$", text):
            pwd.getpwuid(int(text.lstrip("+")))
        else:
            pwd.getpwnam(text)
    except (KeyError, ValueError, OverflowError):
        return False
    return True


def binary_valid(value):
    if not isinstance(value, str):
        return None
    if value == "auto":
        return True
    if not value.strip() or _text_unusable(value) or not os.path.isabs(value):
        return False
    try:
        info = os.stat(value)
    except (OSError, ValueError):
        return False
    # Not writable by group or others, like every directory above it (the fixture's directories are root's 0755).
    return stat.S_ISREG(info.st_mode) and bool(info.st_mode & 0o111) and not info.st_mode & (stat.S_IWOTH | stat.S_IWGRP)


def ansible_int_trap(value):
    """Text ansible-core's int conversion cannot survive: "inf" raises OverflowError, "1e999999" runs for minutes."""
    try:
        number = decimal.Decimal(value) if isinstance(value, (str, float)) and not isinstance(value, bool) else None
    except (decimal.DecimalException, ValueError):
        return False
    return number is not None and (not number.is_finite() or number.adjusted() > 30)


def int_in(low, high, power_of_two=False):
    def valid(value):
        if ansible_int_trap(value):
            return False
        if isinstance(value, bool):
            return None
        if isinstance(value, float):
            if not value.is_integer():
                return False
            value = int(value)
        if isinstance(value, str):
            try:
                value = int(value.strip().replace("_", ""))
            except ValueError:
                return None if any(c in value.lower() for c in ".e") else False
        if not isinstance(value, int):
            return None if value is None else False
        return low <= value <= high and (not power_of_two or value & (value - 1) == 0)

    return valid


def choice_of(choices):
    def valid(value):
        if isinstance(value, str):
            return value in choices
        return None

    return valid


def backends_valid(value):
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list):
        return None
    if not all(isinstance(v, str) for v in value):
        return None
    return bool(value) and all(v in ("anonymous", "shmem", "hugetlbfs") for v in value)


def bool_valid(value):
    if isinstance(value, bool):
        return True
    if isinstance(value, (dict, list)):
        return False
    return None


# --------------------------------------------------------------------------------------------
# values: the junk every option gets, and what each is likely to be confused with

JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    # No lone surrogates: Ansible cannot even send them to a module (its argument encoding refuses them).
    st.sampled_from(["", " ", "\x00", "a\nb", "\t", "auto ", "../qemu", "$(reboot)", "; rm -rf /", "x" * 5000, "inf", "-Infinity", "NaN", "1e999999"]),
    st.lists(st.text(max_size=8), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)
ACCOUNTS = st.sampled_from(
    ["auto", " auto ", "root", "0", "+0", "daemon", "nobody", "65534", "hvm-probe-test", "no-such-user-x", "99999999", "-1", "r00t", "²", "٣"]
)
POWERS = st.builds(lambda k: 1 << k, st.integers(min_value=0, max_value=40))
BACKENDS = st.lists(st.sampled_from(["anonymous", "shmem", "hugetlbfs", "ram", "", "Shmem"]), max_size=4)


UNKNOWN_NAMES = st.text(min_size=1, max_size=12).filter(lambda k: not k.startswith("_"))


def facts_values(binaries):
    """Values to try, per option; "unknown" is a made-up option name."""
    return {
        "target_page_size": st.one_of(POWERS, JUNK, st.sampled_from(["4096", "0x1000", "4_096", "4096.0", " 2048 "])),
        "timeout": st.one_of(st.integers(min_value=-5, max_value=4000), JUNK),
        "probe_user": st.one_of(ACCOUNTS, JUNK),
        "qemu_binary": st.one_of(st.sampled_from(sorted(binaries.values()) + ["auto", "qemu-system-x86_64", "/nonexistent/qemu"]), JUNK),
        "memory_backends": st.one_of(BACKENDS, st.sampled_from(["anonymous,shmem", "shmem", "anonymous, shmem"]), JUNK),
        "ffi_backend": st.one_of(st.sampled_from(["auto", "cffi", "ctypes", "rust", "CFFI"]), JUNK),
    }


FACTS_ORACLE = {
    "target_page_size": int_in(_facts.MIN_PAGE, _facts.MAX_PAGE, power_of_two=True),
    "timeout": int_in(1, _facts.MAX_TIMEOUT),
    "probe_user": account_valid,
    "qemu_binary": binary_valid,
    "memory_backends": backends_valid,
    "ffi_backend": choice_of(BACKEND_CHOICES if HAS_CFFI else tuple(name for name in BACKEND_CHOICES if name != "cffi")),
}


# --------------------------------------------------------------------------------------------
# running a module with one option changed


@contextlib.contextmanager
def spies():
    """Count what touches the host: forks, processes, temporary directories."""
    real_fork = os.fork
    counts = {"fork": 0, "process": 0, "mkdtemp": 0}

    def fork():
        counts["fork"] += 1
        return real_fork()

    def count(name, real):
        def wrapper(*args, **kwargs):
            counts[name] += 1
            return real(*args, **kwargs)

        return wrapper

    with mock.patch.object(os, "fork", fork), mock.patch.object(subprocess, "Popen", count("process", subprocess.Popen)), mock.patch.object(
        tempfile, "mkdtemp", count("mkdtemp", tempfile.mkdtemp)
    ):
        yield counts


def run(main, args):
    out = io.StringIO()
    with spies() as counts, patch_module_args(args), contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main()
    return json.loads(out.getvalue()), counts


def _newlines(value):
    if isinstance(value, dict):
        return sum(_newlines(k) + _newlines(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return sum(_newlines(v) for v in value)
    return str(value).count("\n")


def one_line(message, option, value):
    """One line, but for what Ansible's own argument errors echo back of the value (or name) as given."""
    return message.count("\n") <= _newlines(value) + _newlines(option)


def assert_outcome(option, value, verdict, answer, counts, touched_when_valid, tally):
    COUNTS[tally] = COUNTS.get(tally, 0) + 1
    if answer.get("failed"):
        message = answer["msg"]
        assert one_line(message, option, value), message
        assert "exception" not in answer, answer
        assert option in message, (option, value, message)
        assert counts == {"fork": 0, "process": 0, "mkdtemp": 0}, (option, value, counts)
        assert verdict is not True, (option, value, message)
    else:
        assert verdict is not False, (option, value, answer)
        touched_when_valid(answer, counts)


def _probed_once(answer, counts):
    assert counts["fork"] == 1
    facts = answer["ansible_facts"]
    assert isinstance(facts["postcopy_supported"], bool) and isinstance(facts["postcopy_missing_features"], list)


@pytest.fixture(scope="module")
def root_only():
    if os.geteuid() != 0:
        pytest.skip("needs root: accepted values run the probe, which switches accounts")


def option_cases(option, oracle, values):
    """(name, value) pairs for one option of a module, or unknown option names with junk values."""
    if option == "unknown":
        return st.tuples(UNKNOWN_NAMES.filter(lambda k: k not in oracle), JUNK)
    return st.tuples(st.just(option), values()[option])


@pytest.mark.parametrize("option", sorted(FACTS_ORACLE) + ["unknown"])
def test_postcopy_facts_option(option, binaries, root_only):
    cases = option_cases(option, FACTS_ORACLE, lambda: facts_values(binaries))

    @FUZZ
    @given(cases)
    def one(case):
        name, value = case
        verdict = FACTS_ORACLE[name](value) if name in FACTS_ORACLE else False
        answer, counts = run(postcopy_facts.main, {name: value, "timeout": 10} if name != "timeout" else {name: value})
        assert_outcome(name, value, verdict, answer, counts, _probed_once, "postcopy_facts:" + option)

    one()


def test_qemu_binary_is_never_given_to_a_shell(binaries, root_only, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    answer, counts = run(postcopy_facts.main, {"qemu_binary": binaries["shell_name"]})
    assert not answer.get("failed"), answer
    assert answer["ansible_facts"]["postcopy"]["qemu"]["version"] is None  # it ran, said nothing useful, and that was all
    assert counts["process"] == 1
    assert not os.path.exists(tmp_path / "pwned") and not os.path.exists(tmp_path / "pwned2")
    assert not os.path.exists(os.path.join(os.path.dirname(binaries["shell_name"]), "pwned"))


# --------------------------------------------------------------------------------------------
# postcopy_canary: refused values start nothing; accepted values are run in check mode, which starts nothing either

CANARY_ORACLE = {
    "memory_mb": int_in(*_canary.MEMORY_MB_RANGE),
    "timeout": int_in(*_canary.TIMEOUT_RANGE),
    "probe_user": account_valid,
    "qemu_binary": binary_valid,
    "accel": choice_of(_canary.ACCEL_CHOICES),
    "sandbox": bool_valid,
    "launcher": choice_of(_canary.LAUNCHER_CHOICES),
}


def canary_values(binaries):
    return {
        "memory_mb": st.one_of(st.integers(min_value=-10, max_value=70000), JUNK),
        "timeout": st.one_of(st.integers(min_value=-5, max_value=4000), JUNK),
        "probe_user": st.one_of(ACCOUNTS, JUNK),
        "qemu_binary": st.one_of(st.sampled_from(sorted(binaries.values()) + ["auto", "qemu-system-x86_64"]), JUNK),
        "accel": st.one_of(st.sampled_from(["auto", "kvm", "tcg", "hvf", "KVM"]), JUNK),
        "sandbox": st.one_of(st.booleans(), st.sampled_from(["yes", "no", "maybe", "on", "2"]), JUNK),
        # libvirt itself is not installed on the machines that run this (no virsh: a one-line failure)
        "launcher": st.one_of(st.sampled_from(["auto", "qemu", "lxc", "LIBVIRT"]), JUNK),
    }


@pytest.mark.parametrize("value", ["inf", "-Infinity", "1e999999", float("inf")])
def test_int_options_ansible_core_cannot_convert(value, binaries):
    """ansible-core lets "inf" out as OverflowError and spends minutes on "1e999999": postcopy_facts refuses both first."""
    for option in ("target_page_size", "timeout"):
        answer, counts = run(postcopy_facts.main, {option: value})
        assert answer["failed"] and answer["msg"].startswith("argument '%s' must be an integer" % option), answer
        assert counts == {"fork": 0, "process": 0, "mkdtemp": 0}


def test_canary_int_option_inf_is_one_clean_line():
    answer, _counts = run(postcopy_canary.main, {"memory_mb": "inf", "_ansible_check_mode": True})
    assert answer["failed"] and "memory_mb" in answer["msg"]


def test_canary_probe_user_in_superscript_digits_is_one_clean_line():
    answer, _counts = run(postcopy_canary.main, {"probe_user": "²", "_ansible_check_mode": True})
    assert answer["failed"] and "probe_user" in answer["msg"] and "exception" not in answer


def test_probe_user_in_superscript_digits_is_one_clean_line():
    answer, counts = run(postcopy_facts.main, {"probe_user": " +²³ "})
    assert answer["msg"] == "probe_user: no such account ' +²³ ' on this host (give an account name, a numeric uid, or auto)"
    assert "exception" not in answer and counts == {"fork": 0, "process": 0, "mkdtemp": 0}


def x86_by_name(path):
    name = os.path.basename(path)
    return "x86_64" in name or "i386" in name or name == "qemu-kvm"


def _planned_only(answer, counts):
    assert counts == {"fork": 0, "process": 0, "mkdtemp": 0}, counts
    canary = answer["ansible_facts"]["postcopy_canary"]
    assert canary["ok"] is None and set(canary["commands"]) == {"source", "destination"}


@pytest.mark.parametrize("option", sorted(CANARY_ORACLE) + ["unknown"])
def test_postcopy_canary_option(option, binaries, root_only):
    cases = option_cases(option, CANARY_ORACLE, lambda: canary_values(binaries))

    @FUZZ
    @given(cases, st.booleans())
    def one(case, check_mode):
        name, value = case
        verdict = CANARY_ORACLE[name](value) if name in CANARY_ORACLE else False
        if name == "qemu_binary" and verdict and value != "auto" and not x86_by_name(os.path.realpath(value)):
            # The canary's guest is x86 code: a QEMU whose real path is not named for x86 is refused before anything runs.
            verdict = False
        if verdict is not False and not check_mode:
            return  # an accepted value would start two real QEMUs: check mode shows what would run
        answer, counts = run(postcopy_canary.main, {name: value, "_ansible_check_mode": check_mode})
        assert_outcome(name, value, verdict, answer, counts, _planned_only, "postcopy_canary:" + option)

    one()


# --------------------------------------------------------------------------------------------
# role variables: the spec the role validates itself with


def role_spec():
    if not os.path.exists(ROLE_SPEC):
        pytest.skip("roles/postcopy/meta/argument_specs.yml is not there yet")
    with open(ROLE_SPEC) as handle:
        return yaml.safe_load(handle)["argument_specs"]["main"]["options"]


def _spec_for_validator(options):
    keep = ("type", "elements", "choices", "default", "required", "no_log")
    return dict((name, dict((k, v) for k, v in spec.items() if k in keep)) for name, spec in options.items())


def _role_verdict(spec, value):
    kind = spec.get("type", "str")
    if spec.get("choices") and kind == "str":
        return choice_of(spec["choices"])(value)
    if kind == "list":
        if isinstance(value, bool) and not spec.get("choices"):
            return None  # ansible-core makes it ["True"]; validate.yml then refuses it as no absolute path
        if isinstance(value, (dict, bool)) or value is None:
            return None if value is None else False
        if spec.get("choices") and isinstance(value, list):
            return None if not all(isinstance(v, str) for v in value) else all(v in spec["choices"] for v in value)
        return None
    if kind == "int":
        return int_in(-(10**400), 10**400)(value)  # the spec sets no range: any integer
    if kind == "bool":
        return bool_valid(value)
    return None if not isinstance(value, str) else True


def test_role_variables():
    options = role_spec()
    validator = ArgumentSpecValidator(_spec_for_validator(options))

    @FUZZ
    @given(st.sampled_from(sorted(options)), JUNK)
    def one(name, value):
        if options[name].get("type") == "int" and ansible_int_trap(value):
            return  # ansible-core's own conversion; validate_argument_spec has no way around it (reported)
        COUNTS["role:" + name] = COUNTS.get("role:" + name, 0) + 1
        verdict = _role_verdict(options[name], value)
        errors = validator.validate({name: value}).error_messages
        assert verdict is not True or not errors, (name, value, errors)
        assert verdict is not False or errors, (name, value)
        for message in errors:
            assert name in message and one_line(message, name, value), message

    one()


ROLE_PLAY = """
- name: Role variables through validate_argument_spec itself
  hosts: localhost
  gather_facts: false
  tasks:
    - name: validate
      ansible.builtin.validate_argument_spec:
        argument_spec: "{{ (lookup('file', spec_file) | from_yaml).argument_specs.main.options }}"
        provided_arguments: "{{ {item.name: item.value} }}"
      loop: "{{ cases }}"
      register: checked
      ignore_errors: true
    - name: results
      ansible.builtin.copy:
        dest: "{{ out_file }}"
        content: "{{ checked.results | map(attribute='msg', default='') | list | to_json }}"
"""

ROLE_BAD_VALUES = [
    ("postcopy_target_page_size", "big"),
    ("postcopy_probe_timeout", {"a": 1}),
    ("postcopy_require", "maybe"),
    ("postcopy_grant_access", "everything"),
    # Unknown names pass the spec (it has no copy of the probe's list) and fail the role's own check.
    ("postcopy_memory_backends", {"anonymous": True}),
    ("postcopy_consumers", ["nova", "glance"]),
    ("postcopy_nova_conflicts", "ignore"),
    ("postcopy_nova_config_dirs", {"dir": "/etc/nova/nova.conf.d"}),
    ("postcopy_run_canary", [1, 2]),
]


def test_role_variables_through_validate_argument_spec(tmp_path):
    options = role_spec()
    cases = [{"name": n, "value": v} for n, v in ROLE_BAD_VALUES if n in options]
    (tmp_path / "play.yml").write_text(ROLE_PLAY)
    out = tmp_path / "out.json"
    extra = json.dumps({"cases": cases, "spec_file": ROLE_SPEC, "out_file": str(out)})
    env = dict(os.environ, ANSIBLE_NOCOLOR="1")
    playbook = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
    interpreter = "ansible_python_interpreter=%s" % sys.executable
    proc = subprocess.run([playbook, "-i", "localhost,", "-c", "local", str(tmp_path / "play.yml"), "-e", extra, "-e", interpreter], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120, check=False)
    assert out.exists(), proc.stdout.decode()
    messages = json.loads(out.read_text())
    assert len(messages) == len(cases)
    for case, message in zip(cases, messages):
        assert message.startswith("Validation of arguments failed"), (case, message)
        assert case["name"] in message, (case, message)


def test_zz_report_counts():
    """Prints how many values each option got (the figure in docs/docsite/rst/reliability.rst)."""
    sys.stdout.write("\nfuzzed values per option: %s\ntotal: %d\n" % (json.dumps(COUNTS, sort_keys=True), sum(COUNTS.values())))
