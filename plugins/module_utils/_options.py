# -*- coding: utf-8 -*-
# Copyright: hypervisor.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Option checks shared by the modules: every bad value ends the task in one line naming the option."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import decimal
import sys

__all__ = [
    "new_module",
    "one_line",
    "range_error",
    "text_error",
]

# ansible-core converts an int option given as text through decimal.Decimal: "inf" escapes as
# OverflowError (a traceback) and "1e999999" builds a number with a million digits (minutes of
# CPU). Such values are refused before AnsibleModule converts them; no valid value comes close.
_MAX_INT_EXPONENT = 30


def one_line(text):
    return " ".join(str(text).split())


def text_error(name, value, wanted):
    """Why a string can never name an account or a file (empty, control characters, unencodable); None when it can."""
    value = str(value)
    if not value.strip():
        problem = "an empty string"
    elif any(ord(char) < 32 or ord(char) == 127 for char in value):
        problem = "a value with control characters"
    else:
        try:
            value.encode(sys.getfilesystemencoding(), "surrogateescape")
            return None
        except UnicodeError:
            problem = "a value that cannot be encoded"
    return "%s must be %s, got %s" % (name, wanted, problem)


def range_error(name, value, low, high, unit=""):
    if low <= value <= high:
        return None
    return "%s must be between %d and %d%s, got %d" % (name, low, high, unit, value)


def _unsafe_int(value):
    if isinstance(value, (bool, int)) or not isinstance(value, (str, float)):
        return False
    try:
        number = decimal.Decimal(value)
    except (decimal.DecimalException, ValueError, TypeError):
        return False  # AnsibleModule refuses it in one line itself
    return not number.is_finite() or number.adjusted() > _MAX_INT_EXPONENT


def early_errors(argument_spec, raw):
    """Messages for raw option values AnsibleModule would choke on; empty when there are none."""
    if not isinstance(raw, dict):
        return []
    names = sorted(name for name, spec in argument_spec.items() if spec.get("type") == "int" and _unsafe_int(raw.get(name)))
    return ["argument '%s' must be an integer, got %s" % (name, one_line(repr(raw[name]))[:40]) for name in names]


def new_module(argument_spec, **kwargs):
    """AnsibleModule for argument_spec, after refusing the values its conversion cannot survive."""
    # Imported here: the canary driver uses this file's checks on hosts without ansible-core.
    from ansible.module_utils.basic import AnsibleModule, _load_params

    try:
        errors = early_errors(argument_spec, _load_params())
    except Exception:  # unreadable parameters: AnsibleModule says so itself
        errors = []
    if errors:
        # A module that takes every value as given, only to fail the usual way before anything converts them.
        as_given = AnsibleModule(argument_spec=dict((name, dict(type="raw")) for name in argument_spec), **kwargs)
        as_given.fail_json(msg="; ".join(errors))
    return AnsibleModule(argument_spec=argument_spec, **kwargs)
