#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hypervisor.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: postcopy_nova_config
short_description: Make nova-compute use a given value of [libvirt] live_migration_permit_post_copy
version_added: 1.0.0
description:
  - Finds out how nova-compute is started on the host and computes the value of
    C([libvirt] live_migration_permit_post_copy) it uses, with oslo.config's precedence, before and after the
    role's drop-in is in place; names the file and line that value comes from, and every file nova-compute
    reads, in order.
  - The arguments come from the running nova-compute (C(/proc/PID/cmdline)), else from its systemd unit and,
    when that unit runs a shell script (Debian's and Ubuntu's C(/etc/init.d/nova-compute systemd-start)),
    from what that script passes (the script is read, never run), else Debian's and Ubuntu's order
    (C(--config-file=/etc/nova/nova.conf), then C(/etc/nova/nova-compute.conf) when it exists). O(config_files)
    and O(config_dirs) replace that discovery.
  - oslo.config reads the default files when no C(--config-file) is given, then the default directories
    (C(nova.conf.d), C(nova-compute.conf.d)) when no C(--config-dir) is given, then the C(--config-file) and
    C(--config-dir) arguments in order; a later value wins. A nova-compute started with
    C(--config-file /etc/nova/nova.conf) therefore reads C(/etc/nova/nova.conf.d/) B(before) C(nova.conf).
  - When the module's Python can import oslo.config (every nova host's system Python can), oslo.config itself
    evaluates the same files and the module fails if its own reading disagrees; otherwise the module's own
    implementation of that precedence answers (RV(nova.evaluator)).
  - The module does not write the drop-in O(dropin), the role does. When a file the role does not own would
    still win over it with another value, the module fails naming that file and line (O(conflicts=fail)), or
    changes only that assignment in that file (O(conflicts=override)), keeping a backup.
  - With O(layout=kolla) it sets the option in kolla-ansible's per-host override file
    C(<kolla_config_dir>/nova/<kolla_host>/nova.conf) on the deployment host instead, changing only that
    option, and checks the files kolla-ansible merges after it.
author:
  - hypervisor.migration developers (@hypervisor-migration)
options:
  value:
    description: The value nova-compute must use.
    type: bool
    required: true
  layout:
    description:
      - V(nova) for nova-compute on the host, V(kolla) for kolla-ansible's configuration on the deployment host.
    type: str
    choices: [nova, kolla]
    default: nova
  dropin:
    description:
      - With O(layout=nova), the absolute path of the drop-in the role writes, setting the option to O(value).
        Counted as if it were already written.
    type: path
  reason:
    description: The comment of the drop-in, as the role writes it.
    type: str
    default: ""
  config_files:
    description:
      - The C(--config-file) arguments of nova-compute, in order. Given together with O(config_dirs), or alone,
        they replace the discovery; the files come before the directories.
    type: list
    elements: path
  config_dirs:
    description: The C(--config-dir) arguments of nova-compute, in order.
    type: list
    elements: path
  conflicts:
    description:
      - What to do when a file the role does not own would win with another value.
      - V(fail) fails with one line naming that file and line, before anything is written.
      - V(override) changes only that assignment in that file (a backup is kept, the diff is shown).
    type: str
    choices: [fail, override]
    default: fail
  backup:
    description: Keep a copy of a file before changing it, beside it, named so that oslo.config does not read it.
    type: bool
    default: true
  home:
    description:
      - The home directory of nova-compute's account, where oslo.config also looks for default files.
      - Empty means the running nova-compute's, else the home of the account C(nova), else C(/var/lib/nova).
    type: str
    default: ""
  root:
    description:
      - The directory the host's paths are read below; V(/) except to judge a copy of a host's files.
    type: path
    default: /
  proc:
    description: Where the running processes are listed.
    type: path
    default: /proc
  kolla_config_dir:
    description: With O(layout=kolla), kolla-ansible's C(node_custom_config) directory.
    type: path
  kolla_host:
    description: With O(layout=kolla), the compute host's inventory name.
    type: str
  kolla_service:
    description: With O(layout=kolla), the service whose per-service files kolla-ansible merges.
    type: str
    default: nova-compute
attributes:
  check_mode:
    support: full
    description: Can run in check_mode and return changed status prediction without modifying target.
    details:
      - Computes the same values, reports the change it would make to a conflicting file, and writes nothing.
  diff_mode:
    support: full
    description: Returns the before and after text of each file it changes (or would change in check mode).
notes:
  - A running nova-compute with another root directory than the module's (a container) fails the task, since its files
    are not the host's. Use O(layout=kolla) for kolla-ansible, or give O(config_files) and O(config_dirs).
  - The environment variable C(OS_LIBVIRT__LIVE_MIGRATION_PERMIT_POST_COPY) of the running nova-compute or of its
    systemd unit wins over every file, and cannot be overridden by a file.
  - A file is changed by writing a new one beside it and renaming it over the old one, with the old one's mode,
    owner and group, so a symlink at that path is never followed; a symlink there fails the task instead.
"""

EXAMPLES = r"""
- name: Permit post-copy in nova-compute, failing if another file would win
  hypervisor.migration.postcopy_nova_config:
    value: true
    dropin: /etc/nova/nova.conf.d/50-hypervisor-migration-postcopy.conf

- name: Forbid it for a nova-compute started with two files, changing the file that wins
  hypervisor.migration.postcopy_nova_config:
    value: false
    dropin: /etc/nova/nova.conf.d/50-hypervisor-migration-postcopy.conf
    config_files: [/etc/nova/nova.conf, /etc/nova/nova-compute.conf]
    config_dirs: [/etc/nova/nova.conf.d]
    conflicts: override

- name: Per-host kolla-ansible override
  hypervisor.migration.postcopy_nova_config:
    layout: kolla
    value: "{{ postcopy_enabled }}"
    kolla_config_dir: /etc/kolla/config
    kolla_host: "{{ inventory_hostname }}"
  delegate_to: localhost
"""

RETURN = r"""
nova:
  description: What nova-compute uses, and why.
  returned: always
  type: dict
  contains:
    value:
      description: The value nova-compute uses once the drop-in is written and any conflict overridden.
      type: bool
    file:
      description: The file that value comes from; null for nova's default and for the environment.
      type: str
    line:
      description: The line of RV(nova.file) with the assignment.
      type: int
    why:
      description: Why nova-compute reads that file (C(--config-file), C(default directory /etc/nova/nova.conf.d)...).
      type: str
    before:
      description: The same (value, file, line, why) for the files as they are now.
      type: dict
    wanted:
      description: O(value).
      type: bool
    dropin_read:
      description: Whether nova-compute reads O(dropin) at all.
      type: bool
    started_by:
      description:
        - Where the arguments come from (C(source) one of V(variables), V(process), V(systemd), V(debian), V(kolla)),
          and the arguments, pid, unit and script where known.
      type: dict
    config_files:
      description: The C(--config-file) arguments, in order.
      type: list
      elements: str
    config_dirs:
      description: The C(--config-dir) arguments, in order.
      type: list
      elements: str
    sources:
      description: Every file nova-compute reads, first read first, each with C(path) and C(why).
      type: list
      elements: dict
    evaluator:
      description: C(oslo.config X.Y.Z) when oslo.config evaluated the files, else C(builtin).
      type: str
    conflict:
      description: The file and line that would have won with the other value (C(file), C(line), C(value)); null when none.
      type: dict
    dropin_content:
      description: The text of O(dropin) the value was computed with, for the role to write.
      type: str
    backup_files:
      description: Backups written.
      type: list
      elements: str
  sample:
    value: false
    file: /etc/nova/nova.conf.d/50-hypervisor-migration-postcopy.conf
    line: 4
    why: default directory /etc/nova/nova.conf.d
    wanted: false
    evaluator: oslo.config 10.7.0
"""

import os
import pwd
import tempfile
import traceback

# First: the module_utils imported after it are compiled once from the zip payload.
from ansible_collections.hypervisor.migration.plugins.module_utils import _compile_once  # noqa: F401 pylint: disable=unused-import
from ansible_collections.hypervisor.migration.plugins.module_utils import _novaconf as conf
from ansible_collections.hypervisor.migration.plugins.module_utils import _novastart as start
from ansible_collections.hypervisor.migration.plugins.module_utils._options import new_module, one_line

ARGUMENT_SPEC = dict(
    value=dict(type="bool", required=True),
    layout=dict(type="str", choices=["nova", "kolla"], default="nova"),
    dropin=dict(type="path"),
    reason=dict(type="str", default=""),
    config_files=dict(type="list", elements="path"),
    config_dirs=dict(type="list", elements="path"),
    conflicts=dict(type="str", choices=["fail", "override"], default="fail"),
    backup=dict(type="bool", default=True),
    home=dict(type="str", default=""),
    root=dict(type="path", default="/"),
    proc=dict(type="path", default="/proc"),
    kolla_config_dir=dict(type="path"),
    kolla_host=dict(type="str"),
    kolla_service=dict(type="str", default="nova-compute"),
)
REQUIRED = {"nova": ["dropin"], "kolla": ["kolla_config_dir", "kolla_host"]}


def _require(params):
    missing = [name for name in REQUIRED[params["layout"]] if not params[name]]
    if missing:
        raise conf.NovaConfError("layout %s needs %s" % (params["layout"], " and ".join(missing)))


def _absolute(name, path):
    if path is not None and not os.path.isabs(path):
        raise conf.NovaConfError("%s must be an absolute path, got %r" % (name, path))


def _account_home(params, process):
    if params["home"]:
        return params["home"]
    if process is not None and params["root"] == "/":
        try:
            return pwd.getpwuid(os.stat(os.path.join(params["proc"], str(process["pid"]))).st_uid).pw_dir
        except (OSError, KeyError):
            pass
    if params["root"] == "/":
        try:
            return pwd.getpwnam("nova").pw_dir
        except KeyError:
            pass
    return "/var/lib/nova"


def how_started(params, host):
    """(arguments, cwd, environment, started_by) of nova-compute."""
    if params["config_files"] is not None or params["config_dirs"] is not None:
        args = ["--config-file=%s" % path for path in params["config_files"] or []]
        args += ["--config-dir=%s" % path for path in params["config_dirs"] or []]
        return args, "/", {}, {"source": "variables", "args": args}, None
    process = start.process_arguments(params["proc"])
    if process is not None and process["contained"]:
        raise conf.NovaConfError(
            "nova-compute (pid %d) runs in a container and does not read this host's nova configuration: "
            "use the kolla consumer, or give config_files and config_dirs" % process["pid"]
        )
    if process is not None:
        return process["args"], process["cwd"], process["environ"], {"source": "process", "args": process["args"], "pid": process["pid"]}, process
    unit = start.unit_arguments(host)
    if unit is not None:
        return unit["args"], "/", unit["environ"], {"source": "systemd", "args": unit["args"], "unit": unit["unit"], "script": unit["script"]}, None
    args = start.debian_arguments(host)
    return args, "/", {}, {"source": "debian", "args": args}, None


def _conflict_message(params, winner, dropin_read):
    wanted = "true" if params["value"] else "false"
    if winner["file"] is None:
        where = winner["why"]
        if not dropin_read:
            return ("nova-compute does not read %s (it reads %s), so %s = %s there has no effect: "
                    "start it with --config-dir %s, or set postcopy_nova_conf_dir to a directory it reads"
                    % (params["dropin"], where, conf.NAME, wanted, os.path.dirname(params["dropin"] or "")))
        return "nova-compute takes %s from %s, which no file can override" % (conf.NAME, where)
    return ("%s line %d sets [%s] %s = %s and nova-compute reads it after %s: remove that line, or set "
            "postcopy_nova_conflicts: override to let the role change it"
            % (winner["file"], winner["line"], conf.GROUP, conf.NAME, winner["raw"], params["dropin"] or "the role's setting"))


def write_file(module, host, path, text, result):
    """Replace path's text: a new file beside it renamed over it, keeping mode, owner and group; a backup first."""
    real = host.real(path)
    directory = os.path.dirname(real)
    try:
        info = os.lstat(real)
    except OSError:
        info = None
    if info is not None and (os.path.islink(real) or not os.path.isfile(real)):
        raise conf.NovaConfError("%s is not a regular file (a symlink?): refusing to replace it" % path)
    parent = os.lstat(directory) if os.path.isdir(directory) else None
    if parent is not None and parent.st_mode & 0o002 and not parent.st_mode & 0o1000:
        raise conf.NovaConfError("%s is writable by every account: refusing to write in it" % os.path.dirname(path))
    if module.check_mode:
        return
    if info is not None and module.params["backup"]:
        result["backup_files"].append(module.backup_local(real))
    if parent is None:
        os.makedirs(directory, 0o755)
    fd, temp = tempfile.mkstemp(dir=directory, prefix=".postcopy-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if info is not None:
            os.chmod(temp, info.st_mode & 0o7777)
            os.chown(temp, info.st_uid, info.st_gid)
        else:
            os.chmod(temp, 0o644)
        os.rename(temp, real)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise


def _edit(module, host, path, new_text, result, old_text=None):
    """Write new_text to path (unless check mode) and count it as planned; old_text is what is there now."""
    if old_text is None:
        old_text = host.read(path) if host.isfile(path) else ""
    if old_text == new_text:
        return
    result["diff"].append({"before_header": path, "after_header": path, "before": old_text, "after": new_text})
    write_file(module, host, path, new_text, result)
    host.planned[path] = new_text
    result["changed"] = True


def _cross_check(host, order, args, home, cwd, env_value, winner, label):
    checked = conf.oslo_value(host, order, args, home, cwd, env_value)
    if checked is None:
        return "builtin"
    value, version = checked
    if value != winner["value"]:
        raise conf.NovaConfError(
            "oslo.config %s says %s = %s %s, this module's reading of the same files says %s (from %s): refusing to act on a reading nova would not share"
            % (version, conf.NAME, value, label, winner["value"], winner["file"] or winner["why"])
        )
    return "oslo.config %s" % version


def run_nova(module, result):
    params = module.params
    _absolute("dropin", params["dropin"])
    # the role creates the drop-in's directory: nova-compute finds it there, empty, until the drop-in is written
    host = conf.Host(params["root"], planned_dirs=[os.path.dirname(params["dropin"])])
    args, cwd, environ, started_by, process = how_started(params, host)
    home = _account_home(params, process)
    env_value = environ.get(conf.ENV_NAME)

    def order_of(some_host):
        return conf.read_order(some_host, args, home, cwd)

    before = conf.effective(host, order_of(host), env_value)
    _cross_check(host, order_of(host), args, home, cwd, env_value, before, "now")
    dropin_content = conf.dropin_text(params["value"], params["reason"])
    host.planned[params["dropin"]] = dropin_content
    order = order_of(host)
    dropin_read = any(path == params["dropin"] for path, _why in order)
    winner = conf.effective(host, order, env_value)
    conflict = None
    if winner["value"] != params["value"]:
        conflict = {"file": winner["file"], "line": winner["line"], "value": winner["value"]}
        if params["conflicts"] == "fail" or winner["file"] is None:
            module.fail_json(msg=_conflict_message(params, winner, dropin_read), nova=dict(result["nova"], before=before, conflict=conflict))
        found = conf.assignments(host.read(winner["file"]), winner["file"])[-1]
        _edit(module, host, winner["file"], conf.replace_assignment(host.read(winner["file"]), found[2], found[3], params["value"]), result)
        order = order_of(host)
        winner = conf.effective(host, order, env_value)
    evaluator = _cross_check(host, order, args, home, cwd, env_value, winner, "once the role's changes are made")
    files = [path for kind, path in conf.config_arguments(args) if kind == "file"]
    dirs = [path for kind, path in conf.config_arguments(args) if kind == "dir"]
    result["nova"].update(winner, before=before, started_by=started_by, config_files=files, config_dirs=dirs,
                          sources=[{"path": path, "why": why} for path, why in order], evaluator=evaluator,
                          conflict=conflict, dropin_read=dropin_read, dropin_content=dropin_content)


def run_kolla(module, result):
    params = module.params
    _absolute("kolla_config_dir", params["kolla_config_dir"])
    if not params["kolla_host"] or "/" in params["kolla_host"] or params["kolla_host"].startswith("."):
        raise conf.NovaConfError("kolla_host must be an inventory host name, got %r" % params["kolla_host"])
    base, name, service = params["kolla_config_dir"], params["kolla_host"], params["kolla_service"]
    target = os.path.join(base, "nova", name, "nova.conf")
    # kolla-ansible's merge order for nova.conf of a compute service (roles/nova-cell/tasks/config.yml)
    merged = [os.path.join(base, "global.conf"), os.path.join(base, "nova.conf"), os.path.join(base, "nova", service + ".conf"),
              target, os.path.join(base, "nova", name, service + ".conf")]
    host = conf.Host("/")
    existing = [path for path in merged if host.isfile(path)]

    def order_of(some_host):
        return [(path, "kolla-ansible merge") for path in merged if some_host.isfile(path)]

    before = conf.effective(host, order_of(host), None)
    # judged with the target as it will be, before anything is written
    old_target = host.read(target) if target in existing else ""
    host.planned[target] = conf.set_option(old_target, params["value"], target)
    winner = conf.effective(host, order_of(host), None)
    conflict = None
    if winner["value"] != params["value"]:
        conflict = {"file": winner["file"], "line": winner["line"], "value": winner["value"]}
        if params["conflicts"] == "fail":
            module.fail_json(msg=_conflict_message(dict(params, dropin=target), winner, True), nova=dict(result["nova"], before=before, conflict=conflict))
        _edit(module, host, winner["file"], conf.set_option(host.read(winner["file"]), params["value"], winner["file"]), result)
        winner = conf.effective(host, order_of(host), None)
    _edit(module, host, target, host.planned[target], result, old_text=old_target)
    result["nova"].update(winner, before=before, started_by={"source": "kolla", "args": []}, config_files=[path for path, _why in order_of(host)],
                          config_dirs=[], sources=[{"path": path, "why": why} for path, why in order_of(host)], evaluator="builtin",
                          conflict=conflict, dropin_read=True)


def main():
    module = new_module(ARGUMENT_SPEC, supports_check_mode=True)
    result = {"changed": False, "diff": [], "backup_files": [], "nova": {"wanted": module.params["value"], "backup_files": []}}
    try:
        _require(module.params)
        if module.params["layout"] == "kolla":
            run_kolla(module, result)
        else:
            run_nova(module, result)
    except (conf.NovaConfError, OSError) as exc:
        module.fail_json(msg=one_line(exc))
    except Exception as exc:  # last resort: a bug must still end the task in one line (-vvv shows where)
        module.fail_json(msg="postcopy_nova_config failed unexpectedly: %s: %s" % (exc.__class__.__name__, one_line(exc)), exception=traceback.format_exc())
    result["nova"]["backup_files"] = result.pop("backup_files")
    result["nova"]["value"] = bool(result["nova"]["value"])
    if not module._diff:
        result.pop("diff")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
