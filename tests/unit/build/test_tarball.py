# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The collection tarball holds what its users run and read, and nothing else.

``ansible-galaxy collection build`` packs every file of the checkout that galaxy.yml's
``build_ignore`` does not leave out, so a new directory or a tool's leftovers would ship
unnoticed. This builds the real tarball from the checkout and holds its file list to the
shipped set below; galaxy-importer checks the same tarball in CI (noxfile.py, build-import-check).
"""

from __future__ import absolute_import, division, print_function

import fnmatch
import os
import shutil
import subprocess
import tarfile

import pytest
import yaml

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))

# Every file a user gets, as fnmatch patterns ("*" also crosses "/").
SHIPPED = (
    "MANIFEST.json",
    "FILES.json",
    "README.md",
    "COPYING",
    "CHANGELOG.rst",
    "meta/runtime.yml",
    "meta/execution-environment.yml",
    "meta/ee-requirements.txt",
    "changelogs/changelog.yaml",
    "changelogs/config.yaml",
    "playbooks/*.yml",
    "plugins/modules/*.py",
    "plugins/module_utils/_*.py",
    "plugins/doc_fragments/*.py",
    "plugins/filter/*.py",
    "plugins/filter/*.yml",
    "roles/*/README.md",
    "roles/*/defaults/main.yml",
    "roles/*/handlers/main.yml",
    "roles/*/meta/main.yml",
    "roles/*/meta/argument_specs.yml",
    "roles/*/tasks/*.yml",
    "roles/*/vars/main.yml",
    "roles/*/templates/*.j2",
    "docs/docsite/*.yml",
    "docs/docsite/rst/*.rst",
)

# What Galaxy needs to import the collection and users need to run it.
REQUIRED = (
    "MANIFEST.json",
    "FILES.json",
    "README.md",
    "COPYING",
    "meta/runtime.yml",
    "changelogs/changelog.yaml",
    "playbooks/preflight.yml",
    "plugins/modules/postcopy_facts.py",
    "plugins/modules/postcopy_canary.py",
    "roles/postcopy/README.md",
    "roles/postcopy/meta/argument_specs.yml",
    "roles/postcopy/tasks/main.yml",
)

# Directories whose tracked files all ship: build_ignore must not cut into them.
WHOLE = ("plugins/", "roles/", "playbooks/", "meta/")


def galaxy():
    with open(os.path.join(REPO, "galaxy.yml")) as handle:
        return yaml.safe_load(handle)


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    if not shutil.which("ansible-galaxy"):
        pytest.skip("ansible-galaxy is not on PATH (./dev.sh setup installs ansible-core)")
    out = tmp_path_factory.mktemp("build")
    subprocess.run(["ansible-galaxy", "collection", "build", "--output-path", str(out), REPO],
                   check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    meta = galaxy()
    tarball = out / ("%s-%s-%s.tar.gz" % (meta["namespace"], meta["name"], meta["version"]))
    with tarfile.open(str(tarball)) as archive:
        return sorted(member.name for member in archive.getmembers() if not member.isdir())


def unexpected(names):
    return [name for name in names if not any(fnmatch.fnmatchcase(name, pattern) for pattern in SHIPPED)]


def tracked_files():
    proc = subprocess.run(["git", "-C", REPO, "ls-files", "-z"], stdout=subprocess.PIPE, check=False)
    if proc.returncode:
        pytest.skip("not a git checkout")
    return [name for name in proc.stdout.decode().split("\0") if name and os.path.exists(os.path.join(REPO, name))]


def test_the_tarball_holds_only_the_shipped_files(members):
    assert unexpected(members) == []


def test_the_tarball_holds_what_galaxy_and_users_need(members):
    assert [name for name in REQUIRED if name not in members] == []


def test_every_tracked_file_of_the_shipped_directories_ships(members):
    missing = [name for name in tracked_files() if name.startswith(WHOLE) and name not in members]
    assert missing == []


def test_the_shipped_set_names_development_files_as_unexpected():
    """The check itself: what the tools leave behind and what develops the collection is caught."""
    strays = ["tests/unit/conftest.py", "bench/run", "molecule/default/molecule.yml", "dev.sh", "noxfile.py",
              ".nox/sanity/bin/python", ".hypothesis/examples/x", "changelogs/.plugin-cache.yaml",
              "changelogs/fragments/x.yml", "plugins/modules/__pycache__/x.pyc", "docs/docsite/rst/x.txt"]
    assert unexpected(strays) == strays


def test_build_ignore_leaves_out_the_development_directories():
    ignored = set(galaxy()["build_ignore"])
    assert {"tests", "bench", "molecule", "dev.sh", ".nox", ".hypothesis", "changelogs/.plugin-cache.yaml"} <= ignored
