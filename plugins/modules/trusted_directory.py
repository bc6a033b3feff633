#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hypervisor.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: trusted_directory
short_description: Make sure a directory exists that no account but root can change, without following symlinks
version_added: 1.0.0
description:
  - Walks the path from C(/) down, one component at a time. Every existing component must be a
    directory owned by root (or by the account running the module) and not writable by its group or
    by others; a sticky directory such as C(/tmp) is allowed. A symlink is followed only when it is
    owned by root and everything it points to passes the same check (a symlink in a directory only
    root can change is root's choice). Components that do not exist yet are created with O(mode).
  - Fails, changing nothing, when a component is not a directory or could be changed (or
    redirected) by another account. Root writing into such a directory could be redirected by that account
    (a swapped symlink makes root create or chmod a file elsewhere); the role
    P(hypervisor.migration.postcopy#role) creates every directory it writes into with this module.
  - An existing directory is left as it is (its mode is not changed).
author:
  - hypervisor.migration developers (@hypervisor-migration)
options:
  path:
    description:
      - Absolute path of the directory.
    type: path
    required: true
    version_added: 1.0.0
  mode:
    description:
      - Mode of the directories the module creates, in octal. It must not be writable by group or others.
    type: str
    default: "0755"
    version_added: 1.0.0
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    description: Can run in check_mode and return changed status prediction without modifying target.
    details: Reports which directories would be created, and fails on an untrusted component, without creating anything.
  diff_mode:
    support: full
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
  platform:
    support: full
    description: Target OS/families that can be operated against.
    platforms: posix
notes:
  - The check and the creation are one walk. Once every existing component is root's alone, no
    other account can put anything in the way of the directories created below it.
seealso:
  - name: OpenSSH's rule for the programs it runs as root (StrictModes, AuthorizedKeysCommand)
    description: The same ownership rule, with sticky directories added.
    link: https://man.openbsd.org/sshd_config#AuthorizedKeysCommand
"""

EXAMPLES = r"""
- name: A directory for the local facts that only root can change
  hypervisor.migration.trusted_directory:
    path: /etc/ansible/facts.d

- name: A private directory
  hypervisor.migration.trusted_directory:
    path: /var/lib/hypervisor-migration
    mode: "0700"
"""

RETURN = r"""
path:
  description: The directory, as given.
  returned: always
  type: str
  sample: /etc/ansible/facts.d
created:
  description: The directories created (in check mode, the ones that would be), from the top down.
  returned: always
  type: list
  elements: str
  sample: [/etc/ansible, /etc/ansible/facts.d]
"""

import os
import stat

from ansible.module_utils.basic import AnsibleModule

# First: the module_utils imported after it are compiled once from the zip payload.
from ansible_collections.hypervisor.migration.plugins.module_utils import _compile_once  # noqa: F401 pylint: disable=unused-import
from ansible_collections.hypervisor.migration.plugins.module_utils._trust import components, untrusted_reason

_GROUP_OR_OTHER_WRITE = stat.S_IWGRP | stat.S_IWOTH


def parse_mode(text):
    """The mode as an int, or None when it is not an octal mode root alone may write to."""
    try:
        mode = int(str(text), 8)
    except ValueError:
        return None
    if mode < 0 or mode > 0o7777 or mode & _GROUP_OR_OTHER_WRITE:
        return None
    return mode


def _make(component, mode):
    os.mkdir(component, mode)
    fd = os.open(component, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fchmod(fd, mode)  # mkdir's mode went through the umask
    finally:
        os.close(fd)


def _link_refusal(component, info):
    """A symlink in a directory only root can change is root's choice: follow it if what it points to is root's too."""
    if info.st_uid not in (0, os.geteuid()):
        return "%s is a symlink owned by uid %d" % (component, info.st_uid)
    target = os.path.realpath(component)
    for part in components(target):
        problem = refusal(part, os.lstat(part))
        if problem:
            return "%s (the target of symlink %s)" % (problem, component)
    return None


def refusal(component, info):
    """Why root must not write below component; None when it may."""
    if stat.S_ISLNK(info.st_mode):
        return _link_refusal(component, info)
    if not stat.S_ISDIR(info.st_mode):
        return "%s is not a directory" % component
    return untrusted_reason(info, component)


def ensure_directory(path, mode, check_mode):
    """(created, error): the components made (or to be made) and the refusal, if any."""
    created = []
    for component in components(path):
        try:
            info = os.lstat(component)
        except FileNotFoundError:
            if not check_mode:
                _make(component, mode)
            created.append(component)
            continue
        problem = refusal(component, info)
        if problem:
            return created, problem
    return created, None


def main():
    module = AnsibleModule(
        argument_spec=dict(path=dict(type="path", required=True), mode=dict(type="str", default="0755")),
        supports_check_mode=True,
    )
    path = module.params["path"]
    mode = parse_mode(module.params["mode"])
    if not os.path.isabs(path):
        module.fail_json(msg="path must be an absolute path, got %s" % path)
    if mode is None:
        module.fail_json(msg="mode must be an octal mode without group or other write permission (such as 0755 or 0700), got %s" % module.params["mode"])
    try:
        created, problem = ensure_directory(os.path.normpath(path), mode, module.check_mode)
    except OSError as exc:
        module.fail_json(msg="could not create %s: %s" % (path, exc.strerror or exc))
    if problem:
        module.fail_json(msg="refusing to write below %s: %s, so another account could redirect what root writes there" % (path, problem), created=created)
    diff = {"before": {"path": path, "state": "absent" if created else "directory"}, "after": {"path": path, "state": "directory"}}
    module.exit_json(changed=bool(created), path=path, created=created, diff=diff)


if __name__ == "__main__":
    main()
