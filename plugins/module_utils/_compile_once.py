# -*- coding: utf-8 -*-
# Copyright: hypervisor.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Each of this collection's module_utils files compiled once, not twice, in a module's zip payload.

A module imported first thing by each of the collection's modules, before their other module_utils.

Ansible runs a module from a zip (AnsiballZ) and Python imports it with ``zipimport``. For every
module it imports, ``zipimporter.get_filename`` (asked while the import spec is made) compiles the
source only to learn the file's name, and ``get_code`` then compiles it again to run it. Python
3.8 to 3.13 all do this. For the ~110 KB of module_utils that postcopy_facts imports that is ~17 ms
per run, about a third of what the module costs over ``ansible.builtin.ping``, on every host of
every run (docs/docsite/rst/performance.rst).

The zip importer of this package keeps the code object compiled for ``get_filename`` and hands it to
the ``get_code`` call that follows. Nothing else changes: the same code object from the same source,
the same file name. Outside a zip payload (ansible-test, an exploded module, Mitogen) and on Python
before 3.10, whose zip importer loads modules without ``get_code``, this does nothing.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import sys
import zipimport

__all__ = [
    "compile_once",
]


def _compiled_once_importer(importer):
    """Give one zipimporter a get_filename that keeps its code for the get_code that follows."""
    compiled = {}
    get_code = importer.get_code
    get_filename = importer.get_filename
    inside_archive = importer.archive + os.sep

    def filename_keeping_code(fullname):
        code = get_code(fullname)
        if not code.co_filename.startswith(inside_archive):
            # Bytecode shipped in the zip names the file it was built from: ask zipimport.
            return get_filename(fullname)
        compiled[fullname] = code
        return code.co_filename

    def code_compiled_once(fullname):
        code = compiled.pop(fullname, None)
        return get_code(fullname) if code is None else code

    importer.get_filename = filename_keeping_code
    importer.get_code = code_compiled_once


def compile_once(package_dir=None):
    """Compile this package's modules once when they come from a zip; True when that applies."""
    importer = sys.path_importer_cache.get(package_dir or os.path.dirname(__file__))
    if not isinstance(importer, zipimport.zipimporter) or not hasattr(importer, "exec_module"):
        return False
    if getattr(importer, "_hypervisor_migration_compile_once", False):
        return True
    _compiled_once_importer(importer)
    importer._hypervisor_migration_compile_once = True
    return True


compile_once()
