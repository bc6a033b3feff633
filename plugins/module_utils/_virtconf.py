# -*- coding: utf-8 -*-
# Copyright: hypervisor.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""libvirt's configuration files (qemu.conf), read as root safely and parsed as libvirt parses them.

The grammar is the one of libvirt's own parser (``src/util/virconf.c``), byte for byte:

- A file is a sequence of statements, each followed by a separator: a newline (``\\n`` or
  ``\\r``), ``;``, or the end of the file. Blanks are only space and tab.
- A statement is a comment (``#`` to the end of the line) or ``name = value``, optionally followed
  by a comment. A name is an ASCII letter, then ASCII letters, digits and ``_``. The name and ``=``
  and the start of the value share one line.
- A value is a string, a number or a list:

  - ``"..."`` and ``'...'`` end at the same quote on the same line; ``\"\"\"...\"\"\"`` may span lines.
    There are no escapes: a backslash is an ordinary character. A NUL byte ends the value
    (libvirt copies it as a C string).
  - A number is an optional ``+`` or ``-`` and ASCII digits; with ``-`` it is signed, otherwise
    unsigned. libvirt keeps it in 64 bits and wraps on overflow; so does this reader.
    ``user = +107`` is therefore a number, and only ``user = "+107"`` is libvirt's numeric user form.
  - A list is ``[`` values separated by ``,`` ``]``; newlines may stand around values and commas, a
    trailing comma is allowed, lists nest. A ``#`` inside a list is an error: libvirt allows no
    comments there.

- When a name is set twice, libvirt uses the first assignment (its lookup walks the entries from
  the top); later ones are noted in ``Conf.notes``.

What libvirt does with a file it cannot parse: it refuses the whole file (``virConfReadFile``
fails), its QEMU driver fails to initialise and the daemon (``virtqemud`` or ``libvirtd``) does
not start. A missing file is not an error there: libvirt uses its compiled defaults. This reader
does the same: a parse error is kept in ``Conf.errors`` (``"<source> line N: <what is wrong>"``,
with libvirt's own wording) next to the settings parsed before it, and every typed accessor then
raises ConfError, so that a setting libvirt would never use is never taken for a default. The line
is libvirt's, except for an unterminated \"\"\" string, named where it opens (libvirt names the end of
the file); an unclosed list names both.

Reading (``read_conf``, ``load_conf``) as root never follows a path another account can change:
each directory on the way, every symbolic link's directory and the file itself must be owned by
root and not writable by group or others (as OpenSSH checks its ``AuthorizedKeysCommand``). A
symbolic link as the last component is followed when it and its target pass that check, because
libvirt follows it too; no account but root can then swap anything on the way. Only a regular file
is read (opened without blocking, so a FIFO cannot hang the reader), and at most libvirt's own
bound of 10 MiB: a larger file is refused without being read, as libvirt refuses it.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import os
import re
import stat
from collections import namedtuple

from ansible_collections.hypervisor.migration.plugins.module_utils._launcher import QEMU_CONF
from ansible_collections.hypervisor.migration.plugins.module_utils._trust import path_untrusted_reason, trusted_walk
from ansible_collections.hypervisor.migration.plugins.module_utils._trust import untrusted_reason as untrusted_info_reason

__all__ = [
    "ABSENT",
    "Conf",
    "ConfError",
    "FileText",
    "LIST",
    "MAX_CONF_BYTES",
    "MAX_LIST_DEPTH",
    "QEMU_CONF",
    "READ",
    "REFUSED",
    "SIGNED",
    "STRING",
    "Setting",
    "UNSIGNED",
    "load_conf",
    "parse_conf",
    "path_trusted",
    "read_conf",
    "untrusted_reason",
]

# libvirt's MAX_CONFIG_FILE_SIZE: virConfReadFile refuses a larger file.
MAX_CONF_BYTES = 10 * 1024 * 1024
# libvirt recurses without a bound; this reader stops well before Python's recursion limit.
MAX_LIST_DEPTH = 64

# Value kinds, as libvirt types them (VIR_CONF_STRING, VIR_CONF_ULLONG, VIR_CONF_LLONG, VIR_CONF_LIST).
STRING = "string"
UNSIGNED = "unsigned"
SIGNED = "signed"
LIST = "list"

# File states from read_conf.
READ = "read"
ABSENT = "absent"
REFUSED = "refused"

Setting = namedtuple("Setting", "value line kind")
FileText = namedtuple("FileText", "state text error")

_BITS64 = 1 << 64
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC

# Blank lines and comment lines between statements, skipped in one match (most of a qemu.conf).
_GAP = re.compile(r"(?:[ \t\r\n]*#[^\r\n]*)*[ \t\r\n]*")
_BLANKS = re.compile(r"[ \t]*")
_BLANKS_AND_EOL = re.compile(r"[ \t\r\n]*")
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_ASSIGN = re.compile(r"[ \t]*=[ \t]*")
_QUOTED = {'"': re.compile(r'"([^"\r\n]*)"'), "'": re.compile(r"'([^'\r\n]*)'")}
_NUMBER = re.compile(r"([-+]?)([0-9]*)")
_STATEMENT_TAIL = re.compile(r"[ \t]*(?:#[^\r\n]*)?")
_SEPARATORS = ("\n", "\r", ";")
_NUMBER_STARTS = frozenset("+-0123456789")

_FILE_TYPES = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class ConfError(Exception):
    """A setting cannot be judged: wrong type, or a file libvirt (or this reader) refuses."""


class _ParseError(Exception):
    def __init__(self, pos, message, opened=None):
        Exception.__init__(self, message)
        self.pos = pos
        self.message = message
        self.opened = opened


# --------------------------------------------------------------------------------------------
# parsing


def _c_string(value):
    """The string as libvirt keeps it: a C string ends at the first NUL."""
    return value.partition("\0")[0] if "\0" in value else value


def _wrap64(digits):
    """The decimal digits modulo 2**64, as libvirt's 64-bit accumulator wraps; chunked for long inputs."""
    value = 0
    for start in range(0, len(digits), 1000):
        chunk = digits[start : start + 1000]
        value = (value * 10 ** len(chunk) + int(chunk)) % _BITS64
    return value


def _comment_hint(text, pos):
    return " (libvirt allows no comments inside a list)" if text.startswith("#", pos) else ""


class _Parser(object):
    """libvirt's recursive-descent parser, on positions in one text."""

    def __init__(self, text):
        self.text = text
        self.end = len(text)

    def statements(self):
        """Yield (name, value, kind, name position) for each assignment; _ParseError at the first fault."""
        text, end = self.text, self.end
        pos = 0
        while pos < end:
            start = _GAP.match(text, pos).end()
            if start == end:
                # After a separator only the first statement can meet nothing but blanks, and
                # libvirt then asks for a name: a file of blanks alone does not parse.
                if pos == 0 and "#" not in text:
                    raise _ParseError(start, "expecting a name")
                return
            name = _NAME.match(text, start)
            if name is None:
                raise _ParseError(start, "expecting a name")
            assign = _ASSIGN.match(text, name.end())
            if assign is None:
                raise _ParseError(_BLANKS.match(text, name.end()).end(), "expecting an assignment")
            value, kind, pos = self.value(assign.end(), 0)
            pos = _STATEMENT_TAIL.match(text, pos).end()
            if pos < end:
                if text[pos] not in _SEPARATORS:
                    raise _ParseError(pos, "expecting a separator")
                pos += 1
            yield name.group(), value, kind, start

    def value(self, pos, depth):
        """(value, kind, position after it) for the value at pos."""
        text = self.text
        if pos >= self.end:
            raise _ParseError(pos, "expecting a value")
        first = text[pos]
        if first == '"' and pos + 6 < self.end and text.startswith('"""', pos):
            close = text.find('"""', pos + 3)
            if close < 0:
                raise _ParseError(pos, 'unterminated string (the """ opened here is never closed)')
            return _c_string(text[pos + 3 : close]), STRING, close + 3
        if first in _QUOTED:
            quoted = _QUOTED[first].match(text, pos)
            if quoted is None:
                raise _ParseError(pos, "unterminated string (%s ... %s must close on the same line)" % (first, first))
            return _c_string(quoted.group(1)), STRING, quoted.end()
        if first == "[":
            return self.list(pos, depth + 1)
        if first in _NUMBER_STARTS:
            return self.number(pos)
        raise _ParseError(pos, "expecting a value" + _comment_hint(text, pos))

    def number(self, pos):
        match = _NUMBER.match(self.text, pos)
        sign, digits = match.groups()
        if not digits:
            raise _ParseError(match.end(), "unterminated number")
        if sign == "-":
            value = -_wrap64(digits) % _BITS64
            return (value - _BITS64 if value >= _BITS64 >> 1 else value), SIGNED, match.end()
        return _wrap64(digits), UNSIGNED, match.end()

    def list(self, opened, depth):
        if depth > MAX_LIST_DEPTH:
            raise _ParseError(opened, "lists nested deeper than %d levels" % MAX_LIST_DEPTH)
        text, end = self.text, self.end
        items = []
        pos = _BLANKS_AND_EOL.match(text, opened + 1).end()
        if pos < end and text[pos] != "]":
            item, _kind, pos = self.value(pos, depth)
            items.append(item)
            pos = _BLANKS_AND_EOL.match(text, pos).end()
        while pos < end and text[pos] != "]":
            if text[pos] != ",":
                raise _ParseError(pos, "expecting a separator in list" + _comment_hint(text, pos))
            pos = _BLANKS_AND_EOL.match(text, pos + 1).end()
            if pos < end and text[pos] == "]":
                break
            item, _kind, pos = self.value(pos, depth)
            items.append(item)
            pos = _BLANKS_AND_EOL.match(text, pos).end()
        if pos >= end:
            raise _ParseError(pos, "list is not closed with ]", opened)
        return items, LIST, pos + 1


class _Lines(object):
    """Line numbers of positions, counted forward from the last one asked."""

    def __init__(self, text):
        self.text = text
        self.pos = 0
        self.line = 1

    def at(self, pos):
        if pos < self.pos:
            self.pos, self.line = 0, 1
        self.line += self.text.count("\n", self.pos, pos)
        self.pos = pos
        return self.line


def parse_conf(text, source=QEMU_CONF):
    """The Conf libvirt would read from ``text`` (str, or bytes decoded as UTF-8 keeping odd bytes).

    On a syntax error, ``errors`` holds one line naming the source, the line and libvirt's own
    message, and ``settings`` what was parsed before it; libvirt itself refuses the whole file.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", "surrogateescape")
    settings = {}
    notes = []
    lines = _Lines(text)
    try:
        for name, value, kind, pos in _Parser(text).statements():
            line = lines.at(pos)
            first = settings.get(name)
            if first is None:
                settings[name] = Setting(value, line, kind)
            else:
                notes.append("%s line %d: %s is set again; libvirt uses the first value, line %d" % (source, line, name, first.line))
    except _ParseError as error:
        message = "%s line %d: %s" % (source, lines.at(error.pos), error.message)
        if error.opened is not None:
            message += " (the list opens on line %d)" % lines.at(error.opened)
        return Conf(source, settings, [message], notes)
    return Conf(source, settings, [], notes)


# --------------------------------------------------------------------------------------------
# the parsed file


def _describe(setting_or_item):
    """'a string', 'a list', 'the number 3': what a value is, for messages."""
    if isinstance(setting_or_item, Setting):
        kind, value = setting_or_item.kind, setting_or_item.value
        if kind in (SIGNED, UNSIGNED):
            return "the %snumber %d" % ("signed " if kind == SIGNED else "", value)
        return "a " + kind
    if isinstance(setting_or_item, list):
        return "a list"
    if isinstance(setting_or_item, int):
        return "the number %d" % setting_or_item
    return "a string"


class Conf(object):
    """The settings of one libvirt configuration file, typed as libvirt types them.

    ``settings`` maps a name to ``Setting(value, line, kind)``; ``errors`` lists why the file cannot
    be judged (a syntax error, or a read this reader refused); ``notes`` lists settings made twice;
    ``absent`` says the file does not exist (libvirt then uses its compiled defaults).

    The accessors return None for a setting the file does not make, the value when its type is
    right, and raise ConfError when the type is wrong or when the file has errors: a file libvirt
    refuses has no setting that can be taken as libvirt's.
    """

    def __init__(self, source, settings=None, errors=(), notes=(), absent=False):
        self.source = source
        self.settings = dict(settings or {})
        self.errors = list(errors)
        self.notes = list(notes)
        self.absent = absent

    @property
    def ok(self):
        return not self.errors

    def _typed(self, name, kinds, wanted):
        """The Setting (None when not made) after checking its kind; ConfError when the file cannot be judged."""
        if self.errors:
            raise ConfError("%s; %s cannot be judged" % (self.errors[0], name))
        setting = self.settings.get(name)
        if setting is not None and setting.kind not in kinds:
            raise self._wrong_type(name, setting, wanted)
        return setting

    def _wrong_type(self, name, setting, wanted):
        return ConfError("%s line %d: %s must be %s, got %s" % (self.source, setting.line, name, wanted, _describe(setting)))

    def string(self, name):
        """A string setting (libvirt's virConfGetValueString)."""
        setting = self._typed(name, (STRING,), "a string")
        return None if setting is None else setting.value

    def number(self, name):
        """A number setting, signed or not (libvirt's integer getters before their range checks)."""
        setting = self._typed(name, (SIGNED, UNSIGNED), "a number")
        return None if setting is None else setting.value

    def boolean(self, name):
        """A 0/1 setting (libvirt's virConfGetValueBool: unsigned, and 0 or 1 only)."""
        setting = self._typed(name, (UNSIGNED,), "0 or 1")
        if setting is None:
            return None
        if setting.value not in (0, 1):
            raise self._wrong_type(name, setting, "0 or 1")
        return setting.value == 1

    def string_list(self, name, allow_string=False):
        """A list of strings (libvirt's virConfGetValueStringList); a lone string too when allow_string."""
        wanted = "a list of strings" + (" or a string" if allow_string else "")
        setting = self._typed(name, (LIST, STRING) if allow_string else (LIST,), wanted)
        if setting is None:
            return None
        if setting.kind == STRING:
            return [setting.value]
        for item in setting.value:
            if not isinstance(item, str):
                raise ConfError("%s line %d: %s must be %s, got a list holding %s" % (self.source, setting.line, name, wanted, _describe(item)))
        return list(setting.value)


# --------------------------------------------------------------------------------------------
# reading as root


def untrusted_reason(path):
    """None when no account but root can change what ``path`` leads to, else a one-line reason (see _trust)."""
    return path_untrusted_reason(path)


def path_trusted(path):
    """True when root alone controls ``path``: see untrusted_reason."""
    return untrusted_reason(path) is None


def _file_type(mode):
    for test, name in _FILE_TYPES:
        if test(mode):
            return name
    return "not a regular file"


def _read_at_most(fd, limit):
    chunks = []
    remaining = limit
    while remaining > 0:
        chunk = os.read(fd, min(remaining, 1 << 16))
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _read_regular(fd, path, max_bytes, require_trusted):
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        return FileText(REFUSED, None, "%s is %s, not a regular file; not read" % (path, _file_type(info.st_mode)))
    reason = untrusted_info_reason(info, path) if require_trusted else None
    if reason:
        return FileText(REFUSED, None, "%s; not read" % reason)
    too_big = "%s is larger than the limit of %d bytes (libvirt refuses a file over %d bytes too); not read" % (path, max_bytes, MAX_CONF_BYTES)
    if info.st_size > max_bytes:
        return FileText(REFUSED, None, too_big)
    # One byte past the limit tells a file that grew since fstat (or a /proc file sized 0).
    data = _read_at_most(fd, max_bytes + 1)
    if len(data) > max_bytes:
        return FileText(REFUSED, None, too_big)
    return FileText(READ, data.decode("utf-8", "surrogateescape"), None)


def read_conf(path=QEMU_CONF, max_bytes=MAX_CONF_BYTES, require_trusted=True):
    """FileText(state, text, error) of a configuration file, read as root without being steered.

    ``state`` is READ (``text`` holds the file), ABSENT (no such file: libvirt uses its defaults) or
    REFUSED (``error`` says why in one line: not a regular file, larger than ``max_bytes``, a path
    another account could change when ``require_trusted``, or an I/O error). Never blocks on a FIFO
    and never reads more than ``max_bytes + 1`` bytes.
    """
    flags = _OPEN_FLAGS
    target = path
    try:
        if require_trusted:
            target, reason = trusted_walk(path)
            if reason:
                return FileText(REFUSED, None, "%s: %s; not read" % (path, reason))
            # Every link is resolved and every directory checked: the last component is the file.
            flags |= os.O_NOFOLLOW
        fd = os.open(target, flags)
    except OSError as error:
        if error.errno in (errno.ENOENT, errno.ENOTDIR):
            return FileText(ABSENT, None, None)
        return FileText(REFUSED, None, "%s cannot be opened: %s" % (path, error.strerror))
    try:
        return _read_regular(fd, path, max_bytes, require_trusted)
    except OSError as error:
        return FileText(REFUSED, None, "%s cannot be read: %s" % (path, error.strerror))
    finally:
        os.close(fd)


def load_conf(path=QEMU_CONF, max_bytes=MAX_CONF_BYTES, require_trusted=True):
    """The Conf of a file: read_conf then parse_conf; a refused read is the Conf's one error."""
    read = read_conf(path, max_bytes, require_trusted)
    if read.state == ABSENT:
        return Conf(path, absent=True)
    if read.state == REFUSED:
        return Conf(path, errors=[read.error])
    return parse_conf(read.text, path)
