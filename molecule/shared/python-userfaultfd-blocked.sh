#!/bin/sh
# Python interpreter of a molecule host on which userfaultfd is blocked by seccomp, the way a
# container runtime's default profile blocks it: inventory hosts with
#   ansible_python_interpreter: <this file>
# run every module under tests/tools/seccomp_exec.py --deny userfaultfd:EPERM (Seccomp: 2), so
# QEMU's post-copy would fail there with "Operation not permitted" even as root.
# HVM_BLOCKED_PYTHON picks the real interpreter (default /usr/bin/python3).
set -eu
here=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)
python=${HVM_BLOCKED_PYTHON:-/usr/bin/python3}
exec "$python" "$here/../../tests/tools/seccomp_exec.py" --deny userfaultfd:EPERM -- "$python" "$@"
