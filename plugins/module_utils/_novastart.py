# -*- coding: utf-8 -*-
# Copyright: hypervisor.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""How nova-compute is started on this host: its arguments, and where that answer comes from.

In order: the running nova-compute's command line (/proc/PID/cmdline); else its systemd unit's
ExecStart, and when that runs a shell script (Debian's and Ubuntu's init scripts from
openstack-pkg-tools, ``/etc/init.d/nova-compute systemd-start``), the arguments that script passes;
else Debian's and Ubuntu's order. The script is read, never run: a small reader follows its
assignments, its ``if [ -f ... ]`` tests and the files it sources from /etc, which is how those
scripts build ``DAEMON_ARGS``.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import re
import shlex

__all__ = [
    "SOURCES",
    "debian_arguments",
    "process_arguments",
    "script_arguments",
    "unit_arguments",
]

PROG = "nova-compute"
# Where the answer came from, most trusted first.
SOURCES = ("variables", "process", "systemd", "debian")
UNIT_DIRS = ("/etc/systemd/system", "/run/systemd/system", "/usr/local/lib/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system")
_MAX_SCRIPT_BYTES = 1024 * 1024
_SOURCE_DEPTH = 3
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_ASSIGN = re.compile(r"^(?:export\s+)?(%s)=(.*)$" % _NAME)
_VAR = re.compile(r"\$\{(%s)\}|\$(%s)" % (_NAME, _NAME))
_FUNCTION = re.compile(r"^%s\s*\(\)\s*\{?\s*$" % _NAME)
_BLOCKS = {"case": "esac", "for": "done", "while": "done", "until": "done"}


def _is_nova_compute(argv):
    """The arguments after the program when argv runs nova-compute (directly or through python); else None."""
    for index, word in enumerate(argv[:2]):
        if os.path.basename(word) == PROG:
            return argv[index + 1:]
        if index == 0 and not os.path.basename(word).startswith("python"):
            return None
    return None


def _read_small(path, limit=_MAX_SCRIPT_BYTES):
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        return os.read(fd, limit)
    finally:
        os.close(fd)


def _own_root(base):
    """Whether the process sees the same root directory as this one (not a container's or a chroot's)."""
    try:
        theirs, ours = os.stat(os.path.join(base, "root")), os.stat("/")
    except OSError:
        return True
    return (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino)


def process_arguments(proc):
    """{args, cwd, pid, environ, contained} of the oldest running nova-compute under the proc directory; None when none runs.

    contained is true when it runs with another root directory (a container): its paths are not the host's.
    """
    try:
        pids = sorted(int(name) for name in os.listdir(proc) if name.isdigit())
    except OSError:
        return None
    for pid in pids:
        base = os.path.join(proc, str(pid))
        try:
            argv = [word.decode("utf-8", "replace") for word in _read_small(os.path.join(base, "cmdline")).split(b"\0")[:-1]]
        except OSError:
            continue  # gone, or not ours to read
        args = _is_nova_compute(argv)
        if args is None:
            continue
        try:
            cwd = os.readlink(os.path.join(base, "cwd"))
        except OSError:
            cwd = "/"
        try:
            environ = dict(item.decode("utf-8", "replace").split("=", 1) for item in _read_small(os.path.join(base, "environ")).split(b"\0") if b"=" in item)
        except OSError:
            environ = {}
        return {"args": args, "cwd": cwd, "pid": pid, "environ": environ, "contained": not _own_root(base)}
    return None


def _unit_lines(host, name):
    """The unit file's lines and its drop-ins', in the order systemd applies them; ([], None) when there is none."""
    unit = None
    for directory in UNIT_DIRS:
        path = os.path.join(directory, name)
        if host.isfile(path):
            unit = path
            break
    if unit is None:
        return [], None
    lines = host.read(unit).splitlines()
    dropins = {}
    for directory in UNIT_DIRS:
        confd = os.path.join(directory, name + ".d")
        for path in host.conf_files(confd) if host.isdir(confd) else []:
            dropins.setdefault(os.path.basename(path), path)
    for base in sorted(dropins):
        lines.extend(host.read(dropins[base]).splitlines())
    return lines, unit


def unit_arguments(host, name=PROG + ".service"):
    """{args, unit, script, environ} from the systemd unit of nova-compute; None when it has none or none runs nova."""
    lines, unit = _unit_lines(host, name)
    exec_start, environ = None, {}
    for line in lines:
        key, _sep, value = line.strip().partition("=")
        if key == "ExecStart":
            exec_start = value.strip() or None  # an empty ExecStart= resets the list
        elif key == "Environment":
            for item in shlex.split(value):
                if "=" in item:
                    name, _sep, item_value = item.partition("=")
                    environ[name] = item_value
    if exec_start is None:
        return None
    argv = shlex.split(exec_start.lstrip("@-:+!"))
    if not argv:
        return None
    if _is_shell_script(host, argv[0]):
        args = script_arguments(host, argv[0])
        return None if args is None else {"args": args, "unit": unit, "script": argv[0], "environ": environ}
    args = _is_nova_compute(argv)
    return None if args is None else {"args": args, "unit": unit, "script": None, "environ": environ}


def _is_shell_script(host, path):
    """Whether path is a shell script (an init script), not nova-compute itself (a Python script)."""
    if not host.isfile(path):
        return False
    first = host.read(path)[:128].split("\n", 1)[0]
    return first.startswith("#!") and os.path.basename(first[2:].split()[0] if first[2:].split() else "") in ("sh", "bash", "dash")


def debian_arguments(host):
    """What Debian's and Ubuntu's packages pass: nova.conf, then nova-compute.conf when it exists."""
    args = ["--config-file=/etc/nova/nova.conf"]
    if host.isfile("/etc/nova/nova-compute.conf"):
        args.append("--config-file=/etc/nova/nova-compute.conf")
    return args


# --------------------------------------------------------------------------------------------
# reading a shell script without running it


def _expand(word, env):
    """word with $VAR and ${VAR} replaced (single-quoted text left alone) and the quotes removed."""
    out, quote, index = [], None, 0
    while index < len(word):
        char = word[index]
        if quote != "'" and char == "$":
            match = _VAR.match(word, index)
            if match:
                out.append(env.get(match.group(1) or match.group(2), ""))
                index = match.end()
                continue
        if char in "\"'" and quote in (None, char):
            quote = None if quote else char
        elif char == "\\" and quote != "'" and index + 1 < len(word):
            index += 1
            out.append(word[index])
        else:
            out.append(char)
        index += 1
    return "".join(out)


def _words(text, env):
    try:
        raw = shlex.split(text, posix=False)
    except ValueError:
        return None
    return [_expand(word, env) for word in raw]


def _test(words, host):
    """One [ ... ] test; None when this reader does not know it (then the branch counts as not taken)."""
    if words and words[0] == "!":
        result = _test(words[1:], host)
        return None if result is None else not result
    files = {"-f": host.isfile, "-r": host.isfile, "-e": host.exists, "-d": host.isdir, "-x": host.isfile}
    if len(words) == 2 and words[0] in files:
        return files[words[0]](words[1])
    if len(words) == 2 and words[0] in ("-z", "-n"):
        return (words[1] == "") == (words[0] == "-z")
    if len(words) == 3 and words[1] in ("=", "==", "!="):
        return (words[0] == words[2]) == (words[1] != "!=")
    return None


def _condition(text, env, host):
    """A condition of [ ] tests joined by && and ||, evaluated left to right as the shell does."""
    parts = re.split(r"\s(&&|\|\|)\s", " %s " % text.strip())
    result, joiner = None, None
    for index, part in enumerate(parts):
        if index % 2:
            joiner = part
            continue
        words = _words(part.strip(), env)
        if not words:
            return None
        negate = words[0] == "!"
        if negate:
            words = words[1:]
        if words[0] == "test":
            words = words[1:] + ["]"]
        if words[0] == "[":
            words = words[1:]
        if not words or words[-1] != "]":
            return None
        value = _test(words[:-1], host)
        if value is None:
            return None
        value = value != negate
        result = value if joiner is None else (result and value if joiner == "&&" else result or value)
    return result


class _Reader:
    def __init__(self, host):
        self.host = host
        self.env = {}
        self.exec_args = None

    def run(self, path, depth=0):
        try:
            text = self.host.read(path)
        except (OSError, ValueError):
            return
        lines = [line.strip() for line in text.splitlines()]
        self._block(lines, depth)

    def _skip(self, lines, index, opener, closer):
        """Index after the block that starts at lines[index]."""
        level = 0
        while index < len(lines):
            words = lines[index].split()
            if words and (words[0] == opener or (opener == "{" and _FUNCTION.match(lines[index]))):
                level += 1
            if words and (words[0] == closer or words[-1] == closer):
                level -= 1
                if level <= 0:
                    return index + 1
            index += 1
        return index

    def _block(self, lines, depth):
        # stack of [branch active now, a branch already taken, enclosing active]
        stack = []
        index = 0
        while index < len(lines):
            line = lines[index]
            index += 1
            active = all(frame[0] for frame in stack)
            if not line or line.startswith("#"):
                continue
            word = line.split()[0]
            if _FUNCTION.match(line):
                index = self._skip(lines, index - 1, "{", "}")
            elif word in _BLOCKS:
                index = self._skip(lines, index - 1, word, _BLOCKS[word])
            elif word in ("if", "elif"):
                cond = re.sub(r";?\s*then\s*$", "", line[len(word):]).strip()
                taken = bool(active or word == "elif") and _condition(cond, self.env, self.host) is True
                if word == "if":
                    stack.append([taken, taken])
                elif stack:
                    frame = stack[-1]
                    frame[0] = not frame[1] and all(f[0] for f in stack[:-1]) and _condition(cond, self.env, self.host) is True
                    frame[1] = frame[1] or frame[0]
            elif word == "else" and stack:
                stack[-1][0] = not stack[-1][1]
            elif word == "fi" and stack:
                stack.pop()
            elif active:
                self._statement(line, depth)

    def _statement(self, line, depth):
        if line.startswith(("[", "test ")) and " && " in line:
            cond, _sep, rest = line.rpartition(" && ")
            if _condition(cond, self.env, self.host) is True:
                self._statement(rest.strip(), depth)
            return
        match = _ASSIGN.match(line)
        if match and "$(" not in match.group(2) and "`" not in match.group(2):
            words = _words(match.group(2), self.env)
            if words is not None and len(words) <= 1:
                self.env[match.group(1)] = words[0] if words else ""
            return
        words = _words(line, self.env)
        if not words:
            return
        if words[0] in (".", "source") and len(words) == 2:
            # only files under /etc: what an operator configures (/etc/default/nova-compute); the
            # shell function libraries elsewhere add no arguments
            if words[1].startswith("/etc/") and depth < _SOURCE_DEPTH and self.host.isfile(words[1]):
                self.run(words[1], depth + 1)
            return
        if words[0] == "exec":
            words = words[1:]
        args = _is_nova_compute(words)
        if args is not None:
            self.exec_args = args


def script_arguments(host, path):
    """The arguments the shell script at path passes to nova-compute; None when it shows none."""
    reader = _Reader(host)
    reader.run(path)
    if reader.exec_args is not None:
        return reader.exec_args
    if "DAEMON_ARGS" in reader.env:
        return shlex.split(reader.env["DAEMON_ARGS"])
    return None
