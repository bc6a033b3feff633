#!/usr/bin/env python
# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Print postcopy_facts' ansible_facts as JSON for the options given as one JSON argument.

Lets a test run the real probe in another process: under a seccomp filter (through
seccomp_exec.py), or with another interpreter such as Debian's /usr/bin/python3 without cffi.
Needs PYTHONPATH to reach ansible_collections/hypervisor/migration.
"""

import json
import sys

from ansible_collections.hypervisor.migration.plugins.module_utils._facts import gather_postcopy_facts


def main():
    params = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    warnings = []
    facts = gather_postcopy_facts(params, warn=warnings.append)
    json.dump({"ansible_facts": facts, "warnings": warnings}, sys.stdout)


if __name__ == "__main__":
    main()
