# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Real parts of OpenStack for the nova consumer's tests, fetched once into .build/nova-parts.

- Debian's nova-compute package, unpacked with dpkg-deb -x (never installed): its systemd unit
  and its init script are what the tests discover nova-compute's arguments from.
- nova's wheel from PyPI, not installed (it would pull in most of OpenStack): its
  nova/conf/libvirt.py is where the option's definition is read from.
- kolla-ansible's wheel from PyPI, not installed (it pins an older ansible-core): its
  merge_configs action plugin merges the per-host nova.conf as kolla-ansible does.
"""

from __future__ import absolute_import, division, print_function

import glob
import os
import subprocess
import sys
import zipfile

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
PARTS = os.path.join(REPO, ".build", "nova-parts")
NOVA_WHEEL = "nova==34.0.0"
KOLLA_WHEEL = "kolla-ansible==22.2.0"


def _run(command):
    subprocess.run(command, check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=PARTS, timeout=600)


def debian_nova_compute():
    """Directory holding the unpacked nova-compute package (lib/systemd/system/..., etc/init.d/...)."""
    tree = os.path.join(PARTS, "nova-compute")
    if os.path.isfile(os.path.join(tree, "etc", "init.d", "nova-compute")):
        return tree
    os.makedirs(PARTS, exist_ok=True)
    try:
        _run(["apt-get", "download", "nova-compute"])
    except subprocess.CalledProcessError:
        _run(["apt-get", "update", "-qq"])
        _run(["apt-get", "download", "nova-compute"])
    debs = sorted(glob.glob(os.path.join(PARTS, "nova-compute_*.deb")))
    _run(["dpkg-deb", "-x", debs[-1], tree + ".tmp"])
    os.rename(tree + ".tmp", tree)
    return tree


def _wheel_member(requirement, suffix):
    """The text of the one member of the requirement's wheel whose name ends with suffix."""
    os.makedirs(PARTS, exist_ok=True)
    name = requirement.split("==")[0].replace("-", "_")
    wheels = glob.glob(os.path.join(PARTS, "%s-*.whl" % name))
    if not wheels:
        _run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", PARTS, requirement])
        wheels = glob.glob(os.path.join(PARTS, "%s-*.whl" % name))
    with zipfile.ZipFile(wheels[0]) as wheel:
        member = [item for item in wheel.namelist() if item.endswith(suffix)][0]
        return wheel.read(member).decode("utf-8")


def nova_libvirt_conf():
    """nova/conf/libvirt.py of nova's wheel."""
    return _wheel_member(NOVA_WHEEL, "nova/conf/libvirt.py")


def kolla_merge_configs(action_dir):
    """Write kolla-ansible's merge_configs action plugin into action_dir; its path."""
    os.makedirs(action_dir, exist_ok=True)
    path = os.path.join(action_dir, "merge_configs.py")
    with open(path, "w") as handle:
        handle.write(_wheel_member(KOLLA_WHEEL, "action_plugins/merge_configs.py"))
    return path
