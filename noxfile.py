# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""nox sessions for hypervisor.migration: antsibull-nox's standard collection checks.

antsibull-nox.toml configures lint, docs-check, extra-checks, build-import-check and ansible-lint.
ansible-test runs here in virtual environments (``--venv``) rather than antsibull-nox's default
containers, with the ansible-core the collection is developed against. ./dev.sh runs these
sessions as CI stages; ``nox --list`` shows them all.
"""

# /// script
# dependencies = ["nox>=2025.02.09", "antsibull-nox"]
# ///

import shutil
import sys

import nox

try:
    import antsibull_nox
except ImportError:
    print("You need to install antsibull-nox in the same Python environment as nox.")
    sys.exit(1)

ANSIBLE_CORE = "2.19"
PYTHON = "3.11"

antsibull_nox.load_antsibull_nox_toml()


def _drop_ansible_test_scratch():
    # Runs in the collection's copy. ansible-test can leave tests/output/.tmp/<test>/ behind, and
    # antsibull-nox copies tests/output back bottom-up, making <test>/ before .tmp/ exists.
    shutil.rmtree("tests/output/.tmp", ignore_errors=True)


antsibull_nox.add_ansible_test_session(
    name="ansible-test-sanity",
    description="Run ansible-test sanity with ansible-core %s in a virtual environment" % ANSIBLE_CORE,
    ansible_test_params=["sanity", "--venv", "--python", PYTHON, "--color", "no"],
    default=True,
    ansible_core_version=ANSIBLE_CORE,
    ansible_core_source="pypi",
    callback_after=_drop_ansible_test_scratch,
)

if __name__ == "__main__":
    nox.main()
