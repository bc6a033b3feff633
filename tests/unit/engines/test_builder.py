# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""ansible-builder 3 reads meta/execution-environment.yml, and `ansible-builder create` makes a build
context for an execution environment with this collection without the network (it runs in a
network namespace of its own, with no interface up but loopback)."""

import os
import shutil
import subprocess
import sys

import pytest
import yaml

pytest.importorskip("ansible_builder")

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
BIN = os.path.dirname(sys.executable)


def _tool(name):
    return os.path.join(BIN, name)


def test_introspect_finds_the_collections_python_requirements(tmp_path):
    collections = tmp_path / "ansible_collections" / "hypervisor"
    collections.mkdir(parents=True)
    os.symlink(REPO, str(collections / "migration"))
    out = subprocess.run([_tool("ansible-builder"), "introspect", "--sanitize", str(tmp_path)], capture_output=True, text=True, check=True).stdout
    python = yaml.safe_load(out)["python"]
    assert python == ["cffi  # from collection hypervisor.migration"]


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root and unshare for a network namespace")
def test_create_makes_a_build_context_offline(tmp_path):
    built = subprocess.run([_tool("ansible-galaxy"), "collection", "build", REPO, "--output-path", str(tmp_path)], capture_output=True, text=True, check=True)
    (tarball,) = [name for name in os.listdir(str(tmp_path)) if name.endswith(".tar.gz")]
    assert tarball in built.stdout
    (tmp_path / "requirements.yml").write_text(yaml.safe_dump({"collections": [{"name": "/build/collections/%s" % tarball, "type": "file"}]}))
    definition = {
        "version": 3,
        "images": {"base_image": {"name": "quay.io/fedora/fedora:41"}},
        "dependencies": {
            "python_interpreter": {"package_system": "python3.11", "python_path": "/usr/bin/python3.11"},
            "ansible_core": {"package_pip": "ansible-core>=2.19,<2.20"},
            "ansible_runner": {"package_pip": "ansible-runner"},
            "galaxy": "requirements.yml",
        },
        "additional_build_files": [{"src": tarball, "dest": "collections"}],
        "additional_build_steps": {"prepend_galaxy": ["COPY _build/collections /build/collections"]},
    }
    (tmp_path / "execution-environment.yml").write_text(yaml.safe_dump(definition))
    context = tmp_path / "context"
    argv = [_tool("ansible-builder"), "create", "-f", str(tmp_path / "execution-environment.yml"), "-c", str(context), "--output-filename", "Containerfile"]
    subprocess.run(["unshare", "--net", "--"] + argv, cwd=str(tmp_path), capture_output=True, text=True, check=True)
    assert (context / "_build" / "collections" / tarball).is_file()
    assert yaml.safe_load((context / "_build" / "requirements.yml").read_text())["collections"][0]["name"].endswith(tarball)
    containerfile = (context / "Containerfile").read_text()
    assert "ansible-galaxy collection install" in containerfile
    assert "COPY _build/collections /build/collections" in containerfile
    assert "introspect" in containerfile
