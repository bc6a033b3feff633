# -*- coding: utf-8 -*-
# Copyright: hypervisor.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which value of ``[libvirt] live_migration_permit_post_copy`` nova-compute uses, and from where.

oslo.config reads nova's configuration in this order, a later value winning over an earlier one:

1. when no ``--config-file`` argument is given: the default files, the first existing
   ``nova.conf`` and the first existing ``nova-compute.conf`` in ``~/.nova``, ``~``, ``/etc/nova``,
   ``/etc``;
2. when no ``--config-dir`` argument is given: the ``*.conf`` files, sorted, of the default
   directories ``nova.conf.d`` and ``nova-compute.conf.d`` found the same way;
3. the ``--config-file`` and ``--config-dir`` arguments, in the order given.

So a nova-compute started with ``--config-file /etc/nova/nova.conf`` reads ``/etc/nova/nova.conf.d``
*before* ``nova.conf``. Within one file the last assignment wins; section names are compared in
lower case. The environment variable ``OS_LIBVIRT__LIVE_MIGRATION_PERMIT_POST_COPY`` wins over
every file. This module implements that order for hosts whose Python cannot import oslo.config,
names the file and line a value comes from (oslo.config does not), and, when oslo.config is
importable, lets it evaluate the same files so that the answer is oslo.config's own.

Paths are the host's; ``Host.root`` prefixes them, so tests point a whole ``/etc/nova`` elsewhere.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import shutil
import stat
import tempfile

__all__ = [
    "DEFAULT",
    "ENV_NAME",
    "GROUP",
    "Host",
    "NAME",
    "NovaConfError",
    "dropin_text",
    "effective",
    "oslo_value",
    "read_order",
    "replace_assignment",
    "set_option",
    "to_bool",
]

GROUP = "libvirt"
NAME = "live_migration_permit_post_copy"
DEFAULT = False
ENV_NAME = "OS_%s__%s" % (GROUP.upper(), NAME.upper())
PROJECT = "nova"
PROG = "nova-compute"
# oslo.config's Boolean type
_TRUE = ("true", "1", "on", "yes")
_FALSE = ("false", "0", "off", "no")
_MAX_CONFIG_BYTES = 4 * 1024 * 1024


class NovaConfError(Exception):
    """nova-compute's configuration cannot be read the way nova would read it."""


def to_bool(raw, where):
    """oslo.config's reading of a boolean; a value nova would refuse is an error naming where it is."""
    text = raw.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise NovaConfError("%s: %s = %r is not a boolean, nova-compute would refuse it" % (where, NAME, raw))


def _section_name(line):
    return line[1:-1] if line.endswith("]") and len(line) > 2 else None


def _split_assignment(line):
    """(key, value) of an assignment line, as oslo.config's iniparser splits it; None when it is none."""
    colon, equal = line.find(":"), line.find("=")
    if colon < 0 and equal < 0:
        return None
    cut = equal if colon < 0 or 0 <= equal < colon else colon
    value = line[cut + 1:].strip()
    if value and value[0] == value[-1] and value[0] in "\"'":
        value = value[1:-1]
    return line[:cut].strip(), value


def assignments(text, where):
    """[(line number, raw value, first line, last line)] of the option in text, in file order."""
    found = []
    section = None
    current = None  # [lineno, value parts, first, last] of the assignment being read
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip()
        if line and line[0] in " \t":
            if current is not None:
                current[1].append(line.lstrip())
                current[3] = lineno
            continue
        current = None
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = _section_name(line)
            if section is None:
                raise NovaConfError("%s line %d: invalid section %r" % (where, lineno, line))
            continue
        split = _split_assignment(line)
        if split is None or not split[0]:
            raise NovaConfError("%s line %d: not an assignment: %r" % (where, lineno, line))
        if section is None:
            raise NovaConfError("%s line %d: assignment before any section" % (where, lineno))
        if section.lower() == GROUP and split[0] == NAME:
            current = [lineno, [split[1]], lineno, lineno]
            found.append(current)
    return [(entry[0], "\n".join(entry[1]), entry[2], entry[3]) for entry in found]


class Host:
    """The host's files, read below root, with paths named as the host names them."""

    def __init__(self, root="/", planned=None, planned_dirs=()):
        self.root = root
        # {host path: text} of files as they will be once the role has written them
        self.planned = dict(planned or {})
        # directories the role creates
        self.planned_dirs = set(path.rstrip("/") for path in planned_dirs)

    def real(self, path):
        return os.path.join(self.root, path.lstrip("/")) if self.root != "/" else path

    def exists(self, path):
        return path in self.planned or os.path.exists(self.real(path))

    def isdir(self, path):
        """A directory, or one the role creates for a file it plans."""
        wanted = path.rstrip("/")
        return os.path.isdir(self.real(path)) or wanted in self.planned_dirs or any(os.path.dirname(planned) == wanted for planned in self.planned)

    def isfile(self, path):
        return path in self.planned or os.path.isfile(self.real(path))

    def conf_files(self, directory):
        """The ``*.conf`` names in directory, sorted as oslo.config sorts its glob."""
        names = set()
        real = self.real(directory)
        if os.path.isdir(real):
            names.update(name for name in os.listdir(real) if name.endswith(".conf") and not name.startswith("."))
        names.update(os.path.basename(path) for path in self.planned if os.path.dirname(path) == directory.rstrip("/"))
        return [os.path.join(directory, name) for name in sorted(names) if self.isfile(os.path.join(directory, name))]

    def read(self, path):
        """The file's text. A symlink is followed, as nova follows it; only a regular file is read."""
        if path in self.planned:
            return self.planned[path]
        fd = os.open(self.real(path), os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise NovaConfError("%s is not a regular file" % path)
            data = os.read(fd, _MAX_CONFIG_BYTES + 1)
        finally:
            os.close(fd)
        if len(data) > _MAX_CONFIG_BYTES:
            raise NovaConfError("%s is larger than %d bytes" % (path, _MAX_CONFIG_BYTES))
        return data.decode("utf-8", "replace")


def default_search_dirs(home):
    """oslo.config's _get_config_dirs for project nova (SNAP installs left out)."""
    return [os.path.join(home, "." + PROJECT), home, "/etc/" + PROJECT, "/etc"]


def _first_existing(host, dirs, name, want_dir):
    for directory in dirs:
        path = os.path.join(directory, name)
        if host.isdir(path) if want_dir else host.exists(path):
            return path
    return None


def default_files_and_dirs(host, home):
    dirs = default_search_dirs(home)
    files = [_first_existing(host, dirs, base + ".conf", False) for base in (PROJECT, PROG)]
    conf_dirs = [_first_existing(host, dirs, base + ".conf.d", True) for base in (PROJECT, PROG)]
    return [path for path in files if path], [path for path in conf_dirs if path]


def config_arguments(args):
    """[("file"|"dir", path)] of the --config-file and --config-dir arguments, in order."""
    found = []
    index = 0
    while index < len(args):
        arg = args[index]
        for kind in ("file", "dir"):
            flag = "--config-" + kind
            if arg == flag and index + 1 < len(args):
                found.append((kind, args[index + 1]))
                index += 1
            elif arg.startswith(flag + "="):
                found.append((kind, arg[len(flag) + 1:]))
        index += 1
    return found


def read_order(host, args, home, cwd="/"):
    """[(path, why)] of the files nova-compute reads, first read first, as oslo.config orders them."""
    given = [(kind, os.path.normpath(os.path.join(cwd, path))) for kind, path in config_arguments(args)]
    default_files, default_dirs = default_files_and_dirs(host, home)
    order = []
    if not any(kind == "file" for kind, _path in given):
        order.extend((path, "default file") for path in default_files)
    if not any(kind == "dir" for kind, _path in given):
        for directory in default_dirs:
            order.extend((path, "default directory %s" % directory) for path in host.conf_files(directory))
    for kind, path in given:
        if kind == "file":
            if not host.exists(path):
                raise NovaConfError("nova-compute's --config-file %s does not exist: nova-compute would not start" % path)
            order.append((path, "--config-file"))
        else:
            if not host.isdir(path):
                raise NovaConfError("nova-compute's --config-dir %s does not exist: nova-compute would not start" % path)
            order.extend((name, "--config-dir %s" % path) for name in host.conf_files(path))
    return order


def effective(host, order, env_value=None):
    """The value nova-compute uses: {value, file, line, raw, why}; file is None for the default and the environment."""
    if env_value is not None:
        return {"value": to_bool(env_value, "environment variable " + ENV_NAME), "file": None, "line": None,
                "raw": env_value, "why": "environment variable %s" % ENV_NAME}
    for path, why in reversed(order):
        found = assignments(host.read(path), path)
        if found:
            lineno, raw, _first, _last = found[-1]
            return {"value": to_bool(raw, "%s line %d" % (path, lineno)), "file": path, "line": lineno, "raw": raw, "why": why}
    return {"value": DEFAULT, "file": None, "line": None, "raw": None, "why": "nova's default"}


def dropin_text(value, reason):
    return (
        "# Managed by Ansible (role hypervisor.migration.postcopy): do not edit, changes are overwritten.\n"
        "# Post-copy live migration is %s on this host: %s\n"
        "[%s]\n%s = %s\n" % ("enabled" if value else "disabled", reason, GROUP, NAME, "true" if value else "false")
    )


def _assignment_line(value):
    return "%s = %s" % (NAME, "true" if value else "false")


def replace_assignment(text, first, last, value):
    """text with the assignment on lines first..last (1-based, continuation lines included) set to value."""
    lines = text.splitlines(True)
    ending = "\n" if lines[last - 1].endswith("\n") else ""
    lines[first - 1:last] = [_assignment_line(value) + ending]
    return "".join(lines)


def set_option(text, value, where):
    """text with the option set to value: its last assignment replaced, else a line added to [libvirt]."""
    found = assignments(text, where)
    if found:
        _lineno, _raw, first, last = found[-1]
        return replace_assignment(text, first, last, value)
    lines = text.splitlines(True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    headers = [index for index, line in enumerate(lines) if line.startswith("[") and (_section_name(line.rstrip()) or "").lower() == GROUP]
    if headers:
        lines.insert(headers[-1] + 1, _assignment_line(value) + "\n")
    else:
        lines.extend((["\n"] if lines else []) + ["[%s]\n" % GROUP, _assignment_line(value) + "\n"])
    return "".join(lines)


def _mirror(host, order, args, home, cwd, top):
    """Copy what nova-compute would read into top, at the same paths; the arguments, pointed there."""
    def inside(path):
        return os.path.join(top, os.path.normpath(os.path.join(cwd, path)).lstrip("/"))

    def copy(path):
        target = inside(path)
        if not os.path.isdir(os.path.dirname(target)):
            os.makedirs(os.path.dirname(target))
        with open(target, "w") as handle:
            handle.write(host.read(path))

    for path, _why in order:
        copy(path)
    for kind, path in config_arguments(args):
        if kind == "dir" and not os.path.isdir(inside(path)):
            os.makedirs(inside(path))
    default_files, default_dirs = default_files_and_dirs(host, home)
    mapped = []
    for kind, path in config_arguments(args):
        mapped.append("--config-%s=%s" % (kind, inside(path)))
    return mapped, [inside(path) for path in default_files], [inside(path) for path in default_dirs]


def _oslo_version():
    try:
        from importlib.metadata import version  # pylint: disable=import-outside-toplevel
        return version("oslo.config")
    except Exception:  # no metadata (a distribution's own packaging): the version does not change the answer
        return "unknown version"


def oslo_value(host, order, args, home, cwd="/", env_value=None):
    """(value, oslo.config version) from the host's oslo.config on the same files; None when it is not importable."""
    try:
        from oslo_config import cfg  # pylint: disable=import-outside-toplevel
    except ImportError:
        return None
    top = tempfile.mkdtemp(prefix="postcopy-nova-")
    saved = os.environ.pop(ENV_NAME, None)
    try:
        if env_value is not None:
            os.environ[ENV_NAME] = env_value
        mapped, files, dirs = _mirror(host, order, args, home, cwd, top)
        conf = cfg.ConfigOpts()
        # registered the way nova/conf/libvirt.py registers it
        conf.register_opt(cfg.BoolOpt(NAME, default=DEFAULT), group=GROUP)
        try:
            conf(mapped, project=PROJECT, prog=PROG, default_config_files=files, default_config_dirs=dirs)
            value = conf[GROUP][NAME]
        except (cfg.Error, ValueError) as exc:
            raise NovaConfError("oslo.config cannot read nova-compute's configuration: %s" % str(exc).replace(top, "")) from None
        return value, _oslo_version()
    finally:
        os.environ.pop(ENV_NAME, None)
        if saved is not None:
            os.environ[ENV_NAME] = saved
        shutil.rmtree(top, ignore_errors=True)
