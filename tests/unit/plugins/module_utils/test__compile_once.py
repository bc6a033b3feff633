# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Modules imported from a zip payload are compiled once, and are otherwise the modules zipimport gives.

Each case runs a fresh interpreter (every Python this machine has, 3.8 to 3.13) that imports a small
package from a zip, as AnsiballZ does, and counts the calls to compile() per file.
"""

import glob
import json
import os
import subprocess
import sys
import textwrap
import zipfile

import pytest
from ansible_collections.hypervisor.migration.plugins.module_utils import _compile_once

SHIM = _compile_once.__file__.replace(".pyc", ".py")

# a imports the shim first, then b, as the collection's modules do; b fails on request, to show
# that a traceback still names the file and line in the zip.
MODULE_A = "from pkg import _compile_once\nfrom pkg import b\n\nVALUE = b.twice(21)\n"
MODULE_B = "def twice(x):\n    return 2 * x\n\n\ndef fail():\n    raise ValueError('from b')\n"

DRIVER = textwrap.dedent(
    """
    import builtins, json, sys, traceback
    counts = {}
    real_compile = builtins.compile

    def counting_compile(source, filename, *args, **kwargs):
        counts[filename] = counts.get(filename, 0) + 1
        return real_compile(source, filename, *args, **kwargs)

    builtins.compile = counting_compile
    sys.path.insert(0, sys.argv[1])
    import pkg.a
    import pkg.b
    try:
        pkg.b.fail()
    except ValueError:
        frame = traceback.extract_tb(sys.exc_info()[2])[-1]
    applied = pkg._compile_once.compile_once() if hasattr(pkg, "_compile_once") else False
    print(json.dumps({
        "counts": dict((k.rsplit("/", 1)[-1], v) for k, v in counts.items() if "pkg" in k),
        "value": pkg.a.VALUE, "file": pkg.b.__file__, "origin": pkg.b.__spec__.origin,
        "frame": [frame.filename, frame.lineno], "applied": applied,
    }))
    """
)


def _pythons():
    """This interpreter, Debian's, and the pyenv ones managed hosts may run (3.8 and newer)."""
    found = {sys.executable}
    found.update(p for p in ("/usr/bin/python3",) if os.path.exists(p))
    for python in glob.glob("/root/.pyenv/versions/3.*/bin/python3"):
        minor = python.split("/versions/3.")[1].split(".")[0]
        if int(minor) >= 8:
            found.add(python)
    return sorted(found)


def _interpreter_version(python):
    out = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], capture_output=True, text=True, check=True)
    return tuple(int(part) for part in out.stdout.split("."))


def _payload(tmp_path, with_shim=True):
    path = tmp_path / ("with.zip" if with_shim else "without.zip")
    with zipfile.ZipFile(str(path), "w") as archive:
        archive.writestr("pkg/__init__.py", "")
        archive.write(SHIM, "pkg/_compile_once.py")
        archive.writestr("pkg/a.py", MODULE_A if with_shim else MODULE_A.replace("from pkg import _compile_once\n", ""))
        archive.writestr("pkg/b.py", MODULE_B)
    return str(path)


def _run(python, target, tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    out = subprocess.run([python, "-S", str(driver), target], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.mark.parametrize("python", _pythons())
def test_each_module_compiled_once_from_a_zip(python, tmp_path):
    version = _interpreter_version(python)
    target = _payload(tmp_path)
    result = _run(python, target, tmp_path)
    expected = 1 if version >= (3, 10) else 2
    assert result["applied"] is (version >= (3, 10))
    assert result["counts"]["a.py"] == 2  # imported before the shim could act
    assert result["counts"]["b.py"] == expected
    assert result["value"] == 42
    b_path = os.path.join(target, "pkg", "b.py")
    assert result["file"] == result["origin"] == b_path
    assert result["frame"] == [b_path, 6]


@pytest.mark.parametrize("python", _pythons())
def test_without_it_zipimport_compiles_twice(python, tmp_path):
    """The cost it removes is real on this Python: without the shim, b.py is compiled twice."""
    result = _run(python, _payload(tmp_path, with_shim=False), tmp_path)
    assert result["counts"]["b.py"] == 2
    assert result["value"] == 42


def test_nothing_changes_outside_a_zip(tmp_path):
    package = tmp_path / "tree" / "pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "_compile_once.py").write_text(open(SHIM).read())
    (package / "a.py").write_text(MODULE_A)
    (package / "b.py").write_text(MODULE_B)
    result = _run(sys.executable, str(tmp_path / "tree"), tmp_path)
    assert result["applied"] is False
    assert result["value"] == 42
    assert result["frame"] == [str(package / "b.py"), 6]


def test_every_module_imports_it_before_its_other_module_utils():
    modules = os.path.join(os.path.dirname(SHIM), "..", "modules")
    for name in sorted(os.listdir(modules)):
        if not name.endswith(".py") or name == "__init__.py":
            continue
        with open(os.path.join(modules, name)) as handle:
            ours = [line for line in handle if line.startswith("from ansible_collections.hypervisor.migration.plugins.module_utils")]
        assert ours[0].startswith("from ansible_collections.hypervisor.migration.plugins.module_utils import _compile_once"), name
