# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Nothing lost: the probe run thousands of times in one process leaves no fd, mapping or child behind.

observe() makes every native call of the probe (device, syscall, UFFDIO_API, register and
unregister of an anonymous and a shared page) in this process: 10,000 times with the default
backend, 1,000 with the other. The child runner (fork, account guards, pipe) and the whole
gather run a few hundred times more. Before and after: /proc/self/fd, the probe's pages in
/proc/self/maps and this process's children must be the same. Each observe() costs ~0.8 ms of
kernel time here, each fork of this (large) pytest process ~25 ms: hence the counts.
"""

import os
import time

import hostctl
import pytest
from ansible_collections.hypervisor.migration.plugins.module_utils._facts import gather_postcopy_facts
from ansible_collections.hypervisor.migration.plugins.module_utils._ffi import HAS_CFFI, select_backend
from ansible_collections.hypervisor.migration.plugins.module_utils._host import hugepage_sizes, page_size
from ansible_collections.hypervisor.migration.plugins.module_utils._probe import observe
from ansible_collections.hypervisor.migration.plugins.module_utils._switch import run_in_child

DEFAULT_BACKEND = "cffi" if HAS_CFFI else "ctypes"
OBSERVE_RUNS = {DEFAULT_BACKEND: 10000, "ctypes" if HAS_CFFI else "cffi": 1000}
CHILD_RUNS = 300
GATHER_RUNS = 50
WARM_UP = 20
BACKENDS = ["ctypes"] + (["cffi"] if HAS_CFFI else [])


def fds():
    return sorted(os.listdir("/proc/self/fd"))


def probe_mappings():
    """Mappings the probe could leave: single pages, anonymous or the probe's memfd."""
    with open("/proc/self/maps") as maps:
        lines = maps.read().splitlines()
    found = []
    for line in lines:
        fields = line.split()
        start, end = (int(x, 16) for x in fields[0].split("-"))
        name = fields[5] if len(fields) > 5 else ""
        if "hvm-postcopy-probe" in name or (end - start == page_size() and name == ""):
            found.append(line)
    return found


def all_mappings():
    with open("/proc/self/maps") as maps:
        return maps.read().splitlines()


def snapshot():
    return {"fds": fds(), "children": hostctl.child_pids(), "probe_mappings": probe_mappings(), "mappings": len(all_mappings())}


def unchanged(before, after):
    assert after["fds"] == before["fds"]
    assert after["children"] == before["children"] == []
    assert after["probe_mappings"] == before["probe_mappings"]
    # Python's own allocator may add or return an arena meanwhile; the probe's pages are checked exactly above.
    assert abs(after["mappings"] - before["mappings"]) <= 4, (before["mappings"], after["mappings"])


@pytest.fixture(scope="module")
def as_root():
    if os.geteuid() != 0:
        pytest.skip("needs root: the probe's register steps need a usable userfaultfd")


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_observe_ten_thousand_times_in_process(as_root, backend_name):
    backend = select_backend(backend_name)
    page, hugepages = page_size(), hugepage_sizes()

    def once(device_first):
        result = observe(backend, page, ["anonymous", "shmem"], hugepages, device_first=device_first)
        assert result["register"]["anonymous"]["ok"] and result["register"]["shmem"]["ok"], result

    for _run in range(WARM_UP):
        once(True)
    before = snapshot()
    start = time.monotonic()
    for run in range(OBSERVE_RUNS[backend_name]):
        once(run % 2 == 0)  # both ways of getting the fd QEMU would use
    elapsed = time.monotonic() - start
    unchanged(before, snapshot())
    assert elapsed < 30, elapsed


def test_child_runner_hundreds_of_times(as_root):
    backend = select_backend("ctypes")
    page = page_size()

    def probe():
        return observe(backend, page, ["anonymous", "shmem"])

    for _run in range(WARM_UP):
        run_in_child(probe)
    before = snapshot()
    for _run in range(CHILD_RUNS):
        assert run_in_child(probe)["access"]["used"] is not None
    unchanged(before, snapshot())


def test_whole_gather_fifty_times(as_root):
    for _run in range(5):
        gather_postcopy_facts({"memory_backends": ["anonymous", "shmem"]})
    before = snapshot()
    for _run in range(GATHER_RUNS):
        assert gather_postcopy_facts({"memory_backends": ["anonymous", "shmem"]})["postcopy_supported"] is True
    unchanged(before, snapshot())
