#!/usr/bin/env python
# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Rewrite the causes table of docs/docsite/rst/causes.rst from _diagnose.CAUSES and REMEDIES.

The cause ids and remedies come from the code; the middle column (how the probe tells the cause
apart) is the guide's own prose and is kept, row by row. A new cause gets an empty middle cell,
which tests/unit/docs/test_docs.py refuses until it is written.

    PYTHONPATH=.build/collections python tests/tools/causes_table.py [--check]
"""

import argparse
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import rst_table  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
GUIDE = os.path.join(ROOT, "docs", "docsite", "rst", "causes.rst")
HEADER = ["cause", "how the probe tells it apart", "remedy (`causes[].remedy`)"]
_TABLE = re.compile(r"\.\. list-table::\n(?:   .*\n|\n(?=   ))*", re.MULTILINE)


def current_rows(text):
    """{cause: told-apart cell} from the table in the guide."""
    match = _TABLE.search(text)
    rows = {}
    if not match:
        return rows
    for block in match.group(0).split("\n   * - ")[2:]:
        cells = block.split("\n     - ")
        rows[cells[0].strip().strip("`")] = cells[1].strip() if len(cells) > 1 else ""
    return rows


def table(told_apart):
    from ansible_collections.hypervisor.migration.plugins.module_utils import _diagnose

    text = rst_table.list_table(HEADER, [], widths=[20, 40, 40])
    lines = [text.rstrip("\n")]
    for cause in _diagnose.CAUSES:
        lines.append("   * - ``%s``" % cause)
        lines.append(("     - " + told_apart.get(cause, "")).rstrip())
        lines.append("     - " + rst_table.inline(_diagnose.REMEDIES[cause]))
    return "\n".join(lines) + "\n"


def rewritten(text):
    match = _TABLE.search(text)
    new = table(current_rows(text))
    if not match:
        return text.rstrip("\n") + "\n\n" + new
    return text[:match.start()] + new + text[match.end():]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report whether the guide is current")
    args = parser.parse_args(argv)
    with open(GUIDE) as handle:
        current = handle.read()
    wanted = rewritten(current)
    if args.check:
        if wanted != current:
            print("%s is stale: run python tests/tools/causes_table.py" % os.path.relpath(GUIDE, ROOT), file=sys.stderr)
            return 1
        return 0
    with open(GUIDE, "w") as handle:
        handle.write(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
