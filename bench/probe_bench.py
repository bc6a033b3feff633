# -*- coding: utf-8 -*-
# Copyright: hypervisor.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""pytest-benchmark: the probe in-process (warm), and through the forked child with and without the account switch.

Run by bench/bench.py as ``pytest bench/probe_bench.py --benchmark-json=...`` with the collection
on PYTHONPATH; not part of the unit tests. The account is HVM_TEST_USER (the test account that
bench/run creates when missing); the account benchmarks skip when not root or when it is absent.
"""

import os
import pwd

import pytest
from ansible_collections.hypervisor.migration.plugins.module_utils._accounts import resolve_account
from ansible_collections.hypervisor.migration.plugins.module_utils._facts import gather_postcopy_facts
from ansible_collections.hypervisor.migration.plugins.module_utils._ffi import BACKENDS, HAS_CFFI, select_backend
from ansible_collections.hypervisor.migration.plugins.module_utils._host import page_size
from ansible_collections.hypervisor.migration.plugins.module_utils._probe import observe
from ansible_collections.hypervisor.migration.plugins.module_utils._switch import run_in_child

TEST_USER = os.environ.get("HVM_TEST_USER", "hvm-probe-test")
PAGE = page_size()


def _account():
    if os.geteuid() != 0:
        pytest.skip("the account switch needs root")
    try:
        pwd.getpwnam(TEST_USER)
    except KeyError:
        pytest.skip("no account %s" % TEST_USER)
    return resolve_account(TEST_USER)


def _rss_mib():
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1048576.0


@pytest.fixture(autouse=True)
def _record_rss(benchmark):
    # A fork's cost grows with the parent's memory: note this process's, to compare with the module's.
    yield
    benchmark.extra_info["rss_mib"] = round(_rss_mib(), 1)


def _backends():
    return [name for name in BACKENDS if HAS_CFFI or name != "cffi"]


@pytest.fixture(params=_backends())
def backend(request):
    backend = select_backend(request.param)
    observe(backend, PAGE, device_first=False)  # warm: the first calls resolve the C functions
    return backend


def test_observe(benchmark, backend):
    """The probe's syscalls and the Python around them, in this process, as root."""
    benchmark.group = "observe"
    result = benchmark(observe, backend, PAGE, ("anonymous",), None, False)
    assert result["register"]["anonymous"]["ok"] is True


def test_child_root(benchmark, backend):
    """The same probe through run_in_child: fork, pipe, JSON, wait; no account switch."""
    benchmark.group = "child"
    result = benchmark(run_in_child, lambda: observe(backend, PAGE, ("anonymous",), None, False), None, 10)
    assert result["uid"] == os.geteuid()


def test_child_account(benchmark, backend):
    """run_in_child as the test account: fork, setgroups/setgid/setuid, probe, JSON, wait."""
    account = _account()
    benchmark.group = "child"
    result = benchmark(run_in_child, lambda: observe(backend, PAGE, ("anonymous",), None, False), account, 10)
    assert result["uid"] == account.uid


def test_gather_root(benchmark):
    """Everything postcopy_facts does after AnsibleModule: host facts, QEMU version, probe, diagnosis."""
    benchmark.group = "gather"
    benchmark(gather_postcopy_facts, {"probe_user": "root"})


def test_gather_account(benchmark):
    _account()
    benchmark.group = "gather"
    facts = benchmark(gather_postcopy_facts, {"probe_user": TEST_USER})
    assert facts["postcopy"]["probe_user"]["name"] == TEST_USER
