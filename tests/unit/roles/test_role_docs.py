# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""roles/postcopy/meta/argument_specs.yml is the single source of truth for the role's variables:
defaults/main.yml and the variable reference in docs/role.md must be what tests/tools/role_docs.py
generates from it."""

from __future__ import absolute_import, division, print_function

import os
import sys

import yaml

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))
sys.path.insert(0, os.path.join(REPO, "tests", "tools"))

import role_docs  # noqa: E402

ROLE = os.path.join(REPO, "roles", "postcopy")


def load(*path):
    with open(os.path.join(ROLE, *path)) as f:
        return yaml.safe_load(f)


def test_generated_files_are_current(capsys):
    assert role_docs.main(["--check"]) == 0, capsys.readouterr().err


def test_defaults_are_the_specs_defaults():
    options = load("meta", "argument_specs.yml")["argument_specs"]["main"]["options"]
    defaults = load("defaults", "main.yml")
    assert defaults == dict((name, spec["default"]) for name, spec in options.items() if "default" in spec)


def test_probe_entry_point_is_a_subset_of_main():
    specs = load("meta", "argument_specs.yml")["argument_specs"]
    main, probe = specs["main"]["options"], specs["probe"]["options"]
    for name, spec in probe.items():
        assert name in main
        for key in ("type", "elements", "choices", "default"):
            assert spec.get(key) == main[name].get(key), (name, key)


def test_every_variable_is_public_and_documented():
    options = load("meta", "argument_specs.yml")["argument_specs"]["main"]["options"]
    with open(os.path.join(REPO, "docs", "role.md")) as f:
        doc = f.read()
    for name, spec in options.items():
        assert name.startswith("postcopy_"), name
        assert "#### `%s`" % name in doc, name
        assert spec.get("description"), name


def test_markup_becomes_markdown():
    assert role_docs.markdown("O(postcopy_x=device) needs C(/dev/userfaultfd), see M(a.b.c)") == (
        "`postcopy_x=device` needs `/dev/userfaultfd`, see `a.b.c`"
    )
    assert role_docs.plain("V(auto) or I(path)") == "auto or path"
