# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run a module's main() in the test process, through AnsibleModule's real argument handling."""

import json

import pytest
from ansible.module_utils.testing import patch_module_args

__all__ = ["run_module_main"]


def run_module_main(main, args, capsys):
    """The module's JSON answer for args, with its exit code as "rc"."""
    with patch_module_args(args), pytest.raises(SystemExit) as exit_info:
        main()
    result = json.loads(capsys.readouterr().out)
    result["rc"] = exit_info.value.code
    return result
