# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The README stays short and leads to every guide; the guides in docs/docsite/rst/ are all listed
for antsibull-docs; the causes table is the code's own vocabulary; nothing cites a file the
repository does not have."""

from __future__ import absolute_import, division, print_function

import os
import re
import subprocess
import sys

import pytest
import yaml

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))
sys.path.insert(0, os.path.join(REPO, "tests", "tools"))

import rst_table  # noqa: E402

RST = os.path.join(REPO, "docs", "docsite", "rst")
README = os.path.join(REPO, "README.md")


def read(*path):
    with open(os.path.join(REPO, *path)) as handle:
        return handle.read()


def guides():
    return sorted(name[:-4] for name in os.listdir(RST) if name.endswith(".rst"))


def test_the_readme_is_short():
    assert len(read("README.md").splitlines()) <= 200


def test_the_readme_starts_with_the_two_commands():
    first_block = read("README.md").split("```sh\n", 1)[1].split("```", 1)[0].splitlines()
    assert [line.split("#")[0].strip() for line in first_block] == ["./dev.sh preflight", "./dev.sh test"]


def test_every_guide_is_one_click_from_the_readme():
    links = set(re.findall(r"\]\((docs/docsite/rst/[\w.-]+\.rst)\)", read("README.md")))
    assert sorted(links) == ["docs/docsite/rst/%s.rst" % name for name in guides()]


def test_every_local_link_of_the_readme_exists():
    targets = [t.split("#")[0] for t in re.findall(r"\]\(([^)#:]+(?:#[^)]*)?)\)", read("README.md"))]
    assert [t for t in targets if t and not os.path.exists(os.path.join(REPO, t))] == []


def test_extra_docs_lists_every_guide():
    sections = yaml.safe_load(read("docs", "docsite", "extra-docs.yml"))["sections"]
    listed = sorted(name for section in sections for name in section["toctree"])
    assert listed == guides()


def test_every_guide_has_its_label():
    for name in guides():
        first = read("docs", "docsite", "rst", name + ".rst").splitlines()[0]
        assert first == ".. _ansible_collections.hypervisor.migration.docsite.%s:" % name


def test_the_causes_table_is_the_codes_vocabulary():
    from ansible_collections.hypervisor.migration.plugins.module_utils import _diagnose

    rows = rst_table.rows(read("docs", "docsite", "rst", "causes.rst"))[1:]
    assert [row[0] for row in rows] == ["``%s``" % cause for cause in _diagnose.CAUSES]
    assert all(row[1] for row in rows), "a cause without its explanation: write it in causes.rst"
    assert [row[2] for row in rows] == [rst_table.inline(_diagnose.REMEDIES[cause]) for cause in _diagnose.CAUSES]


def tracked_files():
    proc = subprocess.run(["git", "-C", REPO, "ls-files", "-z"], stdout=subprocess.PIPE, check=False)
    if proc.returncode:
        pytest.skip("not a git checkout")
    return [name for name in proc.stdout.decode().split("\0") if name and os.path.isfile(os.path.join(REPO, name))]


# Spelled in two pieces so that this file does not cite it either.
_DESIGN = re.compile(rb"\b" + b"DESI" + b"GN" + rb"\b")


def test_nothing_cites_a_design_file_the_repository_does_not_have():
    citing = []
    for name in tracked_files():
        with open(os.path.join(REPO, name), "rb") as handle:
            if _DESIGN.search(handle.read()):
                citing.append(name)
    assert citing == []
