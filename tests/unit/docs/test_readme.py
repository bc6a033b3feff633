# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The README's generated sections match the docs they come from, and its two commands are first."""

import os

import readme_sections


def read_readme():
    with open(readme_sections.README) as handle:
        return handle.read()


def test_readme_sections_are_current():
    text = read_readme()
    assert readme_sections.spliced(text) == text, "run: python tests/tools/readme_sections.py"


def test_every_docs_file_is_in_the_readme():
    docs = sorted("docs/" + name for name in os.listdir(os.path.join(readme_sections.ROOT, "docs")) if name.endswith(".md"))
    assert sorted(readme_sections.blocks(read_readme())) == docs


def test_readme_starts_with_the_two_commands():
    first_block = read_readme().split("```sh\n", 1)[1].split("```", 1)[0].splitlines()
    assert [line.split("#")[0].strip() for line in first_block] == ["./dev.sh preflight", "./dev.sh test"]
