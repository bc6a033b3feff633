# -*- coding: utf-8 -*-
# Copyright: hypervisor.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Option checks shared by the modules: every bad value ends the task in one line naming the option."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import decimal
import sys

from ansible.module_utils.basic import AnsibleModule

__all__ = [
    "new_module",
    "one_line",
    "qemu_option_errors",
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


def qemu_option_errors(params):
    """Checks of the options both modules take: QEMU's account and binary."""
    return [
        text_error("probe_user", params["probe_user"], "auto, an account name or a numeric uid"),
        text_error("qemu_binary", params["qemu_binary"], "auto or an absolute path"),
    ]


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
    names = sorted(name for name, spec in argument_spec.items() if spec.get("type") == "int" and _unsafe_int(raw.get(name)))
    return ["argument '%s' must be an integer, got %s" % (name, one_line(repr(raw[name]))[:40]) for name in names]


def _as_given(argument_spec, kwargs):
    """A module that takes every value as given (it converts nothing); None where none can be made."""
    spec = dict((name, dict(type="raw", aliases=item.get("aliases", []), no_log=item.get("no_log", False))) for name, item in argument_spec.items())
    try:
        return AnsibleModule(argument_spec=spec, **dict(kwargs, no_log=True))
    except Exception:  # ansible-test's validate-modules stops at every module made: it reads the real one's spec below
        return None


def new_module(argument_spec, option_errors=None, **kwargs):
    """AnsibleModule for argument_spec; any value it cannot take ends the task in one line naming the option.

    The values are first read as given, and those whose conversion cannot be survived refused;
    then option_errors(params), when given, says what the spec cannot: one message or None per check.
    """
    as_given = _as_given(argument_spec, kwargs)
    errors = early_errors(argument_spec, as_given.params) if as_given else []
    if errors:
        as_given.fail_json(msg="; ".join(errors))
    module = AnsibleModule(argument_spec=argument_spec, **kwargs)
    errors = [error for error in option_errors(module.params) if error] if option_errors else []
    if errors:
        module.fail_json(msg="; ".join(errors))
    return module
