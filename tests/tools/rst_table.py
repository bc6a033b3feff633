# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""RST tables for the guides in docs/docsite/rst/ that tests and tools write.

The generators describe a table as a header and rows of cells in the small inline language they
have always used (``code`` in single backticks, **bold**, ``<br>`` between lines of one cell);
antsibull-docs renders the guides as RST, so ``list_table`` turns that into an RST list-table.
"""

import re

__all__ = ["inline", "list_table", "from_pipe_table", "rows"]

_CODE = re.compile(r"`([^`]+)`")


def inline(text):
    """One cell's text as RST: `code` becomes a literal, everything else is escaped where RST would read it."""
    parts = []
    last = 0
    for match in _CODE.finditer(text):
        parts.append(_escape(text[last:match.start()]))
        parts.append("``%s``" % match.group(1) if match.group(1).strip() == match.group(1) else "\\ ``%s``\\ " % match.group(1).strip())
        last = match.end()
    parts.append(_escape(text[last:]))
    return "".join(parts)


def _escape(text):
    # ** pairs stay bold; a lone * or a trailing _ would start markup in RST.
    text = text.replace("\\", "\\\\").replace("|", "\\|")
    text = re.sub(r"(?<!\*)\*(?!\*)", r"\\*", text)
    return re.sub(r"(\w)_(?=\s|$)", r"\1\\_", text)


def _cell_lines(cell):
    lines = [inline(piece.strip()) for piece in cell.split("<br>")]
    if len(lines) == 1:
        return lines
    return ["| " + line for line in lines]


def list_table(header, rows, widths=None):
    """An RST list-table: the header and rows are lists of cell texts in the generators' inline language."""
    out = [".. list-table::", "   :header-rows: 1"]
    if widths:
        out.append("   :widths: " + " ".join(str(w) for w in widths))
    out.append("")
    for row in [header] + list(rows):
        for index, cell in enumerate(row):
            lines = _cell_lines(cell) or [""]
            first = "   * - " if index == 0 else "     - "
            out.append((first + lines[0]).rstrip())
            out.extend(("       " + line).rstrip() for line in lines[1:])
    return "\n".join(out) + "\n"


def from_pipe_table(text):
    """The RST list-table for a Markdown pipe table (header, separator, rows)."""
    rows = [_split(line) for line in text.strip().splitlines()]
    return list_table(rows[0], rows[2:])


def _split(line):
    return [cell.strip() for cell in line.strip().strip("|").split(" | ")]


def rows(text, first_header=None):
    """The rows (header first) of a list-table in an RST text, each a list of its cells' text: the
    first table, or the first whose header starts with the cell ``first_header``."""
    for table in text.split(".. list-table::")[1:]:
        found = _table_rows(table)
        if first_header is None or (found and found[0][0] == first_header):
            return found
    return []


def _table_rows(table):
    found = []
    for line in table.splitlines()[1:]:
        if line.startswith("   * - ") or line == "   * -":
            found.append([line[len("   * - "):]])
        elif line.startswith("     - ") or line == "     -":
            found[-1].append(line[len("     - "):])
        elif line.startswith("       ") and found:
            found[-1][-1] += "\n" + line.strip()
        elif line and not line.startswith("   :") and found:
            break
    return found
