# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What loading the collection's filter files costs an Ansible worker.

A task that uses any filter of this collection has its worker (a fresh process per host and task)
load every file in plugins/filter, and Ansible's collection loader compiles module_utils from source
each time: the filter files must load without importing them. This runs Ansible's own filter
loader, as a worker does."""

import json
import subprocess
import sys

import pytest

FILTERS = ("postcopy_preflight_args", "postcopy_verdict", "postcopy_prometheus_textfile")

LOAD = """
import json, sys
from ansible.plugins.loader import filter_loader, init_plugin_loader
init_plugin_loader()
plugin = filter_loader.get("hypervisor.migration." + sys.argv[1])
print(json.dumps({"found": plugin is not None, "loaded": sorted(m for m in sys.modules if ".plugins.module_utils." in m),
                  "files": sorted(m for m in sys.modules if ".plugins.filter." in m)}))
"""


@pytest.mark.parametrize("name", FILTERS)
def test_loading_a_filter_imports_no_module_utils(name):
    out = subprocess.run([sys.executable, "-c", LOAD, name], capture_output=True, text=True, check=True).stdout
    loaded = json.loads(out.strip().splitlines()[-1])
    assert loaded["found"]
    # Every filter file was loaded (what makes this matter), and none pulled in the probe's code.
    assert len(loaded["files"]) >= 3
    assert loaded["loaded"] == []


def test_the_vocabularies_are_still_there_when_asked_for():
    from ansible_collections.hypervisor.migration.plugins.filter import postcopy_role
    from ansible_collections.hypervisor.migration.plugins.module_utils import _diagnose, _probe

    assert postcopy_role.MEMORY_BACKENDS == tuple(row.name for row in _probe.MEMORY_BACKENDS)
    assert postcopy_role.FEATURE_IDS == _diagnose.FEATURES + ("canary",)
    with pytest.raises(AttributeError):
        postcopy_role.NOT_A_VOCABULARY  # noqa: B018
