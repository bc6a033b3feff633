#!/usr/bin/env python
# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run the post-copy canary for the options given as one JSON argument and print the module's result.

The canary's counterpart of tests/tools/gather_facts.py: the agreement suite runs it in a new
process under the condition's seccomp filter, wrapper and account, so that both QEMUs the canary
starts inherit them. It calls the module's driver (module_utils/_canary.py) the way
postcopy_canary does and prints {"ansible_facts": {"postcopy_canary": ...}}, or
{"failed": true, "msg": ...} when the canary could not run at all. Needs PYTHONPATH to reach
ansible_collections/hypervisor/migration.
"""

import json
import sys

from ansible_collections.hypervisor.migration.plugins.module_utils._canary import CanaryError, CanaryInterrupted, make_settings, run_canary


def main():
    params = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    try:
        settings = make_settings(**params)
        result = {"changed": False, "ansible_facts": {"postcopy_canary": run_canary(settings)}}
    except (CanaryError, CanaryInterrupted) as exc:  # as postcopy_canary's main() does
        result = {"failed": True, "msg": str(exc)}
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
