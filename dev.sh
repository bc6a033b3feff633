#!/usr/bin/env bash
# Development and CI entry point for the hypervisor.migration collection.
#
#   ./dev.sh preflight [ansible-playbook args]   run the hypervisor.migration.preflight playbook
#   ./dev.sh test                                run every test stage, then print a summary
#   ./dev.sh STAGE                               run one stage: ruff changelog docs galaxy unit agreement
#                                                integration ssh sanity lint molecule bench
#   ./dev.sh setup                               only prepare the machine and .venv/ for the tests
#   ./dev.sh shell                               a shell with the environment dev.sh uses
#
# Works on a fresh Debian 12 machine as root with only python3 and apt. The preflight needs only
# ansible-core: it installs tests/requirements-preflight.txt into .venv/ and no Debian package.
# The tests install the Debian packages they use and tests/requirements.txt. Either way the
# collection is visible to Ansible through .build/collections (a symlink to this checkout). Setup
# is idempotent and skipped when the requirements and this file have not changed since it last
# succeeded. The collection checks of the Ansible ecosystem (antsibull-docs, galaxy-importer,
# ansible-test, yamllint) are nox sessions (noxfile.py, antsibull-nox.toml): nox --list.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
cd "$REPO"

VENV=$REPO/.venv
BUILD=$REPO/.build
COLLECTIONS=$BUILD/collections
COLLECTION_LINK=$COLLECTIONS/ansible_collections/hypervisor/migration
INVENTORY=$BUILD/inventory/localhost.ini
STAMP=$VENV/.dev-setup-stamp
PYTHON=${PYTHON:-python3}

# Debian packages the tests use: QEMU is the oracle for post-copy support, libseccomp wraps an
# interpreter in a filter that denies userfaultfd, chromium renders reports, passwd has useradd,
# ansible-test sanity runs shellcheck on shell scripts, libvirt0 (the library alone, no daemon) is
# the oracle for libvirt's configuration file grammar, debootstrap makes the Debian 12 and 13 roots
# whose libvirt and QEMU the agreement stage runs (tests/tools/debroot.py, cached in /var/cache),
# the ssh stage starts its own sshd and becomes root through sudo, the role's prometheus consumer is
# scraped through a node_exporter the unit test starts and its file checked with promtool (prometheus).
APT_TEST_PACKAGES=(qemu-system-x86 qemu-utils python3-seccomp libseccomp2 chromium fonts-liberation passwd shellcheck libvirt0 debootstrap
    openssh-server sudo prometheus-node-exporter prometheus)
POLICY_RC=/usr/sbin/policy-rc.d
PREFLIGHT_REQUIREMENTS=tests/requirements-preflight.txt
TEST_REQUIREMENTS=tests/requirements.txt

# Unprivileged account the unit and integration tests switch to.
export HVM_TEST_USER=hvm-probe-test
TEST_USER_STATE=/run/hvm-probe-test.dev-sh
STAGES=(ruff changelog docs galaxy unit agreement integration ssh sanity lint molecule bench)

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'dev.sh: %s\n' "$*" >&2; exit 1; }
skip() { printf 'SKIP: %s\n' "$*" >&2; return 0; }
# A whole stage has nothing to test yet: say so, and let the summary show it as skipped.
skip_stage() {
    skip "$@"
    [[ -z ${STAGE_SKIP_FILE:-} ]] || printf '%s\n' "$*" >>"$STAGE_SKIP_FILE"
}

# --------------------------------------------------------------------------------------------
# setup

apt_missing() {
    local pkg status
    for pkg in "$@"; do
        status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null || true)
        [[ $status == ii* ]] || printf '%s\n' "$pkg"
    done
}

# Installs the Debian packages named as arguments (and python3-venv where venv cannot run).
setup_apt() {
    local -a wanted=("$@") missing
    if ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
        wanted+=(python3-venv)
    fi
    command -v dpkg-query >/dev/null 2>&1 || { ((${#wanted[@]} == 0)) || log "no dpkg: not installing ${wanted[*]}"; return 0; }
    ((${#wanted[@]})) || return 0
    mapfile -t missing < <(apt_missing "${wanted[@]}")
    ((${#missing[@]})) || return 0
    if [[ $(id -u) != 0 ]]; then
        log "missing Debian packages (run as root to install them): ${missing[*]}"
        return 0
    fi
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # The tests start the daemons they need themselves: installing openssh-server must not start
    # an sshd listening on every address (policy-rc.d 101 = "do not start services").
    local own_policy=0
    if [[ ! -e $POLICY_RC ]]; then
        printf '#!/bin/sh\n# dev.sh: no service starts while it installs packages\nexit 101\n' >"$POLICY_RC"
        chmod 0755 "$POLICY_RC"
        own_policy=1
    fi
    local rc=0
    # Wait for a concurrent apt/dpkg run instead of failing on its lock.
    apt-get -o DPkg::Lock::Timeout=600 update -qq &&
        apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || rc=$?
    ((own_policy)) && rm -f "$POLICY_RC"
    return "$rc"
}

# The hash of one requirements file (with the files it includes), this script and the interpreter.
setup_hash() {
    {
        cat "$1" "$PREFLIGHT_REQUIREMENTS" "${BASH_SOURCE[0]}"
        "$PYTHON" -c 'import sys; print(sys.version)'
    } | sha256sum | cut -d' ' -f1
}

# pip with the machine's configuration, minus its warnings about index locations that do not exist.
quiet_pip() {
    local rc=0
    "$VENV/bin/python" -m pip "$@" 2> >(grep -v -e 'is ignored: it is neither a file nor a directory' >&2) || rc=$?
    return "$rc"
}

# .venv with the requirements file given; the test requirements include the preflight's, so a
# .venv set up for the tests serves the preflight as it is.
setup_venv() {
    local requirements=$1 hash stamp=""
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "$PYTHON is older than 3.11 (ansible-core 2.19 needs 3.11+)"
    hash=$(setup_hash "$requirements")
    [[ -f $STAMP ]] && stamp=$(<"$STAMP")
    if [[ -x $VENV/bin/python ]] && "$VENV/bin/python" -c '' 2>/dev/null; then
        [[ $stamp == "$hash" ]] && return 0
        [[ $requirements == "$PREFLIGHT_REQUIREMENTS" && $stamp == "$(setup_hash "$TEST_REQUIREMENTS")" ]] && return 0
    fi
    if ! { [[ -x $VENV/bin/python ]] && "$VENV/bin/python" -m pip --version >/dev/null 2>&1; }; then
        log "creating $VENV with $("$PYTHON" -c 'import sys; print(sys.executable)')"
        rm -rf "$VENV"
        "$PYTHON" -m venv "$VENV"
    fi
    log "installing $requirements into .venv"
    quiet_pip install -q -r "$requirements"
    printf '%s\n' "$hash" >"$STAMP"
}

setup_collection() {
    mkdir -p "$(dirname "$COLLECTION_LINK")" "$(dirname "$INVENTORY")"
    if [[ $(readlink "$COLLECTION_LINK" 2>/dev/null) != "$REPO" ]]; then
        rm -rf "$COLLECTION_LINK"
        ln -s "$REPO" "$COLLECTION_LINK"
    fi
    # Explicit localhost that behaves like Ansible's implicit one (local connection, the
    # controller's own interpreter), so no interpreter-discovery or empty-hosts warnings.
    cat >"$INVENTORY.tmp" <<'EOF'
# Written by dev.sh: localhost the way Ansible's implicit localhost is.
localhost ansible_connection=local ansible_python_interpreter="{{ ansible_playbook_python }}"
EOF
    mv "$INVENTORY.tmp" "$INVENTORY"
}

setup_env() {
    export PATH="$VENV/bin:$PATH"
    export VIRTUAL_ENV=$VENV
    export ANSIBLE_COLLECTIONS_PATH="$COLLECTIONS${ANSIBLE_COLLECTIONS_PATH:+:$ANSIBLE_COLLECTIONS_PATH}"
    unset PYTHONHOME
}

# setup [preflight]: everything the tests use, or only what the preflight needs.
setup() {
    local -a packages=("${APT_TEST_PACKAGES[@]}")
    local requirements=$TEST_REQUIREMENTS
    if [[ ${1:-} == preflight ]]; then
        packages=()
        requirements=$PREFLIGHT_REQUIREMENTS
    fi
    mkdir -p "$BUILD"
    # One setup at a time per checkout (several dev.sh runs may start together).
    exec {setup_lock}>"$BUILD/setup.lock"
    flock "$setup_lock"
    setup_apt "${packages[@]}"
    setup_venv "$requirements"
    setup_collection
    exec {setup_lock}>&-
    setup_env
}

# --------------------------------------------------------------------------------------------
# the unprivileged test account (shared by concurrent dev.sh runs: the last one out removes it,
# and only when a dev.sh created it)

test_user_acquire() {
    [[ $(id -u) == 0 ]] || { log "not root: not creating $HVM_TEST_USER"; return 0; }
    mkdir -p "$TEST_USER_STATE"
    (
        flock 9
        if ! id "$HVM_TEST_USER" >/dev/null 2>&1; then
            log "creating test account $HVM_TEST_USER"
            useradd --system --no-create-home --user-group --shell /usr/sbin/nologin "$HVM_TEST_USER"
            touch "$TEST_USER_STATE/created"
        fi
        touch "$TEST_USER_STATE/pid.$$"
    ) 9>"$TEST_USER_STATE.lock"
    TEST_USER_ACQUIRED=1
}

test_user_release() {
    [[ ${TEST_USER_ACQUIRED:-0} == 1 ]] || return 0
    TEST_USER_ACQUIRED=0
    (
        flock 9
        rm -f "$TEST_USER_STATE/pid.$$"
        local f
        for f in "$TEST_USER_STATE"/pid.*; do
            [[ -e $f ]] || continue
            kill -0 "${f##*/pid.}" 2>/dev/null || rm -f "$f"
        done
        if [[ -e $TEST_USER_STATE/created ]] && ! compgen -G "$TEST_USER_STATE/pid.*" >/dev/null; then
            log "removing test account $HVM_TEST_USER"
            userdel "$HVM_TEST_USER" 2>/dev/null || true
            rm -f "$TEST_USER_STATE/created"
        fi
    ) 9>"$TEST_USER_STATE.lock"
}

# --------------------------------------------------------------------------------------------
# stages: each succeeds, fails, or says SKIP and succeeds when what it tests does not exist yet

existing() {
    local p
    for p in "$@"; do [[ -e $p ]] && printf '%s\n' "$p"; done
    return 0
}

stage_ruff() {
    local -a paths
    mapfile -t paths < <(existing plugins tests bench noxfile.py)
    ((${#paths[@]})) || { skip_stage "ruff: nothing to check"; return 0; }
    ruff check --no-cache "${paths[@]}"
}

stage_changelog() {
    antsibull-changelog lint
    antsibull-changelog lint-changelog-yaml changelogs/changelog.yaml
}

stage_unit() {
    if [[ ! -d tests/unit ]] || [[ -z $(find tests/unit -name 'test_*.py' -print -quit) ]]; then
        skip_stage "unit: no tests/unit/**/test_*.py yet"
        return 0
    fi
    PYTHONPATH="$COLLECTIONS${PYTHONPATH:+:$PYTHONPATH}" pytest tests/unit -q -p no:cacheprovider
}

# QEMU itself judges the facts, condition by condition (tests/agreement/agreement_conditions.py).
# docs/docsite/rst/agreement.rst is rewritten from a run by hand: pytest tests/agreement --agreement-report=docs/docsite/rst/agreement.rst
stage_agreement() {
    PYTHONPATH="$COLLECTIONS${PYTHONPATH:+:$PYTHONPATH}" pytest tests/agreement -q -p no:cacheprovider
}

# The preflight over real SSH: tests/ssh starts its own sshd on loopback addresses and a login
# account with sudo, and removes both.
stage_ssh() {
    PYTHONPATH="$COLLECTIONS${PYTHONPATH:+:$PYTHONPATH}" pytest tests/ssh -q -p no:cacheprovider
}

# Prints the targets to run, one per line, and the skipped ones on stderr.
integration_targets() {
    local dir name
    for dir in tests/integration/targets/*/; do
        [[ -d $dir ]] || continue
        name=$(basename "$dir")
        if [[ ! -f $dir/tasks/main.yml && ! -f $dir/runme.sh ]]; then
            continue
        fi
        if [[ -f $dir/aliases ]] && grep -qE '^[[:space:]]*(disabled|unsupported)[[:space:]]*(#.*)?$' "$dir/aliases"; then
            skip "integration: $name (aliases says disabled/unsupported)"
            continue
        fi
        printf '%s\n' "$name"
    done
}

stage_integration() {
    local -a targets failed=()
    local name rc
    mapfile -t targets < <(integration_targets)
    ((${#targets[@]})) || { skip_stage "integration: no targets to run in tests/integration/targets"; return 0; }
    for name in "${targets[@]}"; do
        log "integration target: $name"
        rc=0
        if [[ -f tests/integration/targets/$name/tasks/main.yml ]]; then
            ANSIBLE_ROLES_PATH=$REPO/tests/integration/targets \
                ansible-playbook -i "$INVENTORY" tests/integration/run_target.yml -e "target=$name" || rc=$?
        else
            (cd "tests/integration/targets/$name" && INVENTORY_PATH=$INVENTORY bash ./runme.sh) || rc=$?
        fi
        ((rc == 0)) || failed+=("$name")
    done
    if ((${#failed[@]})); then
        printf 'integration: %d of %d targets failed: %s\n' "${#failed[@]}" "${#targets[@]}" "${failed[*]}" >&2
        return 1
    fi
    printf 'integration: %d targets passed\n' "${#targets[@]}"
}

# ansible-test bootstraps pip in each sanity virtual environment with a get-pip script that it
# downloads from a host this machine cannot reach, unless the script is already in its cache. The
# stand-in below gets pip from the interpreter's own ensurepip (in a subprocess: ensurepip run
# in-process drops the machine's pip configuration from the environment) and then installs the
# requested packages, through the machine's pip configuration, like get-pip.py does.
seed_get_pip() {
    local version cache
    version=$(python - <<'EOF'
import types
from ansible_test._internal.python_requirements import get_venv_packages
print(get_venv_packages(types.SimpleNamespace(version='3.11'))['pip'])
EOF
)
    cache=$HOME/.ansible/test/cache/get_pip_${version//./_}.py
    mkdir -p "$(dirname "$cache")"
    if [[ -f $cache ]] && ! grep -q 'hypervisor.migration dev.sh stand-in' "$cache"; then
        return 0  # a real get-pip.py: leave it
    fi
    cat >"$cache.tmp" <<'EOF'
"""Offline stand-in for get-pip.py (hypervisor.migration dev.sh stand-in).

ansible-test runs this to put pip into an empty virtual environment: get pip from the
interpreter's own ensurepip, then pip-install the arguments like get-pip.py does.
"""
import subprocess
import sys


def run(cmd):
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = proc.communicate()[0]
    if proc.returncode:
        sys.stdout.write(out.decode('utf-8', 'replace'))
        sys.exit(proc.returncode)


def main():
    # A subprocess: ensurepip run in-process replaces the pip configuration with os.devnull.
    run([sys.executable, '-m', 'ensurepip', '--upgrade', '--default-pip'])
    args = [arg for arg in sys.argv[1:] if arg not in ('--no-setuptools', '--no-wheel')]
    if any(not arg.startswith('-') for arg in args):
        run([sys.executable, '-m', 'pip', 'install'] + args)


if __name__ == '__main__':
    main()
EOF
    mv "$cache.tmp" "$cache"
}

# An antsibull-nox session (noxfile.py): nox makes a virtual environment per session under .nox/,
# reused between runs, and antsibull-nox copies the collection into an ansible_collections tree.
nox_session() {
    local -a color=(--no-color)
    [[ -t 1 ]] && color=(--force-color)
    (
        unset ANSIBLE_COLLECTIONS_PATH
        nox "${color[@]}" --reuse-venv yes "$@" 2> >(grep -v -e 'is ignored: it is neither a file nor a directory' >&2)
    )
}

# antsibull-docs: the plugin and role docs and docs/docsite (links, references, RST).
stage_docs() {
    nox_session -s docs-check
}

# The tarball as ansible-galaxy builds it, and galaxy-importer on it as Galaxy runs it on upload
# (tests/galaxy-importer.cfg).
stage_galaxy() {
    nox_session -s build-import-check
}

stage_sanity() {
    seed_get_pip
    nox_session -s ansible-test-sanity
}

# ansible-lint as in a plain clone (it installs the collection itself, .ansible-lint says how),
# then antsibull-nox's lint (ruff, yamllint also on the docs' YAML) and extra checks.
stage_lint() {
    local -a color=()
    [[ -t 1 ]] || color=(--nocolor)  # ansible-lint colours even a log file
    env -u ANSIBLE_COLLECTIONS_PATH ansible-lint "${color[@]}"
    nox_session -s lint extra-checks
}

stage_molecule() {
    local -a scenarios failed=()
    local f name rc
    for f in molecule/*/molecule.yml; do
        [[ -f $f ]] && scenarios+=("$(basename "$(dirname "$f")")")
    done
    ((${#scenarios[@]})) || { skip_stage "molecule: no molecule/*/molecule.yml yet"; return 0; }
    # Molecule's prerun would build this collection and install it into ~/.ansible/collections,
    # where it outlives the run and shadows the checkout for every later ansible command. The
    # checkout is already on ANSIBLE_COLLECTIONS_PATH, so turn prerun off (a scenario or a
    # .config/molecule/config.yml can still turn it back on).
    local base=$BUILD/molecule/base-config.yml
    local -a base_args=(--base-config "$base")
    mkdir -p "$(dirname "$base")"
    printf -- '---\n# Written by dev.sh.\nprerun: false\n' >"$base"
    [[ -f .config/molecule/config.yml ]] && base_args+=(--base-config .config/molecule/config.yml)
    for name in "${scenarios[@]}"; do
        log "molecule scenario: $name"
        rc=0
        molecule "${base_args[@]}" test -s "$name" || rc=$?
        ((rc == 0)) || failed+=("$name")
    done
    if ((${#failed[@]})); then
        printf 'molecule: %d of %d scenarios failed: %s\n' "${#failed[@]}" "${#scenarios[@]}" "${failed[*]}" >&2
        return 1
    fi
}

stage_bench() {
    [[ -e bench/run ]] || { skip_stage "bench: no bench/run yet"; return 0; }
    if [[ -x bench/run ]]; then
        bench/run --quick
    else
        log "bench/run is not executable: running it with bash"
        bash bench/run --quick
    fi
}

# --------------------------------------------------------------------------------------------
# running stages

needs_test_user() {
    case $1 in unit | agreement | integration | molecule | bench) return 0 ;; *) return 1 ;; esac
}

now() { date +%s%N; }

# Runs one stage with errexit in force inside it; sets STAGE_RC, STAGE_STATUS and STAGE_SECONDS.
run_stage() {
    local name=$1 start
    log "stage: $name"
    STAGE_SKIP_FILE=$(mktemp)
    export STAGE_SKIP_FILE
    start=$(now)
    set +e
    ( set -e; "stage_$name" )
    STAGE_RC=$?
    set -e
    STAGE_SECONDS=$(awk -v a="$start" -v b="$(now)" 'BEGIN { printf "%.1f", (b - a) / 1e9 }')
    if ((STAGE_RC != 0)); then
        STAGE_STATUS="FAIL (exit $STAGE_RC)"
    elif [[ -s $STAGE_SKIP_FILE ]]; then
        STAGE_STATUS=skip
    else
        STAGE_STATUS=pass
    fi
    rm -f "$STAGE_SKIP_FILE"
    unset STAGE_SKIP_FILE
}

cmd_test() {
    local name npass=0 nfail=0 nskip=0 user_needed=0
    local -a summary=()
    for name in "${STAGES[@]}"; do needs_test_user "$name" && user_needed=1; done
    ((user_needed)) && test_user_acquire
    for name in "${STAGES[@]}"; do
        run_stage "$name"
        case $STAGE_STATUS in
            pass) npass=$((npass + 1)) ;;
            skip) nskip=$((nskip + 1)) ;;
            *) nfail=$((nfail + 1)) ;;
        esac
        summary+=("$(printf '  %-12s %-16s %8ss' "$name" "$STAGE_STATUS" "$STAGE_SECONDS")")
    done
    printf '\n==> summary (stage, result, seconds)\n'
    printf '%s\n' "${summary[@]}"
    printf 'stages: %d passed, %d failed, %d skipped\n' "$npass" "$nfail" "$nskip"
    ((nfail == 0))
}

cmd_stage() {
    local name=$1
    needs_test_user "$name" && test_user_acquire
    run_stage "$name"
    printf '==> %s: %s in %ss\n' "$name" "$STAGE_STATUS" "$STAGE_SECONDS"
    return "$STAGE_RC"
}

cmd_preflight() {
    local arg have_inventory=0
    for arg in "$@"; do
        case $arg in -i | --inventory | --inventory-file | -i?* | --inventory=* | --inventory-file=*) have_inventory=1 ;; esac
    done
    local -a defaults=()
    ((have_inventory)) || defaults=(-i "$INVENTORY")
    ansible-playbook "${defaults[@]}" hypervisor.migration.preflight "$@"
}

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'
}

main() {
    local cmd=${1:-}
    [[ $# -gt 0 ]] && shift
    case $cmd in
        '' | -h | --help | help) usage; [[ -n $cmd ]] ;;
        setup) setup ;;
        shell) setup; test_user_acquire; trap test_user_release EXIT; log "dev.sh environment; exit to leave"; "${SHELL:-bash}" -i ;;
        preflight) setup preflight; cmd_preflight "$@" ;;
        test) setup; trap test_user_release EXIT; cmd_test ;;
        *)
            local s
            for s in "${STAGES[@]}"; do
                if [[ $s == "$cmd" ]]; then
                    setup
                    trap test_user_release EXIT
                    cmd_stage "$cmd"
                    return
                fi
            done
            usage >&2
            die "unknown command: $cmd"
            ;;
    esac
}

main "$@"
