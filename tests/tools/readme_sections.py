#!/usr/bin/env python
# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Keep the README's long sections equal to the files under docs/ they come from.

The docs files are written by the tests and tools that measure them (the agreement suite, the
benchmark, the fault matrix, the role's argument specs); the README carries each one between

    <!-- BEGIN docs/NAME.md -->
    <!-- END docs/NAME.md -->

``python tests/tools/readme_sections.py`` rewrites those blocks; ``--check`` exits 1 when one is stale.
"""

import argparse
import os
import re
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
README = os.path.join(ROOT, "README.md")
_BLOCK = re.compile(r"(<!-- BEGIN (docs/[\w.-]+\.md) -->\n)(.*?)(<!-- END \2 -->)", re.DOTALL)


def spliced(readme):
    """The README text with every block replaced by its docs file."""

    def replace(match):
        with open(os.path.join(ROOT, match.group(2))) as source:
            return match.group(1) + source.read().strip("\n") + "\n" + match.group(4)

    return _BLOCK.sub(replace, readme)


def blocks(readme):
    return [match.group(2) for match in _BLOCK.finditer(readme)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report whether the README is current")
    args = parser.parse_args(argv)
    with open(README) as handle:
        current = handle.read()
    wanted = spliced(current)
    if args.check:
        if wanted != current:
            print("README.md is stale: run python tests/tools/readme_sections.py", file=sys.stderr)
            return 1
        return 0
    with open(README, "w") as handle:
        handle.write(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
