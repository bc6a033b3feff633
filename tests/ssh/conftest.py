# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A fleet over real SSH on this machine: Debian's sshd, started here with its own configuration and
host key in a private directory, listening on loopback addresses only (one address per inventory
host), a login account with passwordless sudo, and root login by key.

Everything is removed at the end, also when a test fails: the sshd processes (stopped and reaped),
the client's ControlPersist masters, the login account with its home, the sudoers drop-in, the
directory, and /run/sshd when this fixture created it.
"""

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
TOOLS = os.path.join(REPO, "tests", "tools")
if TOOLS not in sys.path:
    sys.path.insert(0, TOOLS)

SSHD = "/usr/sbin/sshd"
PRIVSEP_DIR = "/run/sshd"
SUDOERS_DIR = "/etc/sudoers.d"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
# One loopback address per host that has its own sshd; the main sshd listens on all of MAIN_ADDRESSES.
MAIN_ADDRESSES = ["127.0.0.%d" % n for n in range(2, 9)]
STOPPED_ADDRESS = "127.0.0.9"

SSHD_CONFIG = """\
{listen}
HostKey {dir}/host_ed25519
PidFile none
AuthorizedKeysFile {dir}/keys/%u
# The private directory lies under /tmp, which sshd's strict modes refuse as an ancestor.
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
AllowUsers root {login}
Subsystem sftp internal-sftp
LogLevel ERROR
"""


def _run(argv):
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _free_port(address):
    with socket.socket() as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


def _listening(address, port):
    try:
        with socket.create_connection((address, port), timeout=0.5):
            return True
    except OSError:
        return False


class Fleet:
    """The sshd processes, keys, login account and directory of one test module."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="hvm-ssh-")
        os.chmod(self.dir, 0o755)
        self.login = "hvmssh%d" % (os.getpid() % 100000)
        self.port = _free_port(MAIN_ADDRESSES[0])
        self.sudoers = os.path.join(SUDOERS_DIR, self.login)
        self.sshds = {}
        self.made_privsep = False
        self.made_account = False

    # -- setup

    def start(self):
        if not os.path.isdir(PRIVSEP_DIR):
            os.mkdir(PRIVSEP_DIR, 0o755)
            self.made_privsep = True
        self._keys()
        self._account()
        self.sshds["main"] = self._sshd("main", MAIN_ADDRESSES)
        self.sshds["stopped"] = self._sshd("stopped", [STOPPED_ADDRESS])

    def _keys(self):
        keys = os.path.join(self.dir, "keys")
        os.mkdir(keys, 0o755)
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", os.path.join(self.dir, "host_ed25519")])
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", self.client_key])
        with open(self.client_key + ".pub") as public:
            key = public.read()
        for account in ("root", self.login):
            with open(os.path.join(keys, account), "w") as out:
                out.write(key)
            os.chmod(os.path.join(keys, account), 0o644)

    def _account(self):
        home = os.path.join(self.dir, "home")
        _run(["useradd", "--create-home", "--home-dir", home, "--shell", "/bin/sh", "--user-group", self.login])
        self.made_account = True
        # "*" rather than useradd's "!": without PAM, sshd refuses key logins to a locked account.
        _run(["usermod", "--password", "*", self.login])
        with open(self.sudoers + ".tmp", "w") as out:
            out.write("%s ALL=(ALL) NOPASSWD: ALL\n" % self.login)
        os.chmod(self.sudoers + ".tmp", 0o440)
        _run(["visudo", "-c", "-q", "-f", self.sudoers + ".tmp"])
        os.rename(self.sudoers + ".tmp", self.sudoers)

    def _sshd(self, name, addresses):
        config = os.path.join(self.dir, "sshd_%s_config" % name)
        listen = "\n".join("ListenAddress %s:%d" % (address, self.port) for address in addresses)
        with open(config, "w") as out:
            out.write(SSHD_CONFIG.format(listen=listen, dir=self.dir, login=self.login))
        _run([SSHD, "-t", "-f", config])
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", config], stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while not all(_listening(address, self.port) for address in addresses):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("sshd %s did not start listening on %s port %d" % (name, addresses, self.port))
            time.sleep(0.05)
        return proc

    # -- what the tests use

    @property
    def client_key(self):
        return os.path.join(self.dir, "client_ed25519")

    @property
    def control_dir(self):
        return os.path.join(self.dir, "control")

    def login_uid(self):
        return pwd.getpwnam(self.login).pw_uid

    def env(self, record):
        """ansible-playbook's environment: this fleet's key and SSH options, results recorded to ``record``."""
        os.makedirs(self.control_dir, exist_ok=True)
        env = dict(os.environ)
        ssh_args = (
            "-o ControlMaster=auto -o ControlPersist=30s -o ControlPath=%s/%%C "
            "-o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no -o LogLevel=ERROR" % self.control_dir
        )
        env.update(
            {
                "ANSIBLE_SSH_ARGS": ssh_args,
                "ANSIBLE_PRIVATE_KEY_FILE": self.client_key,
                "ANSIBLE_HOST_KEY_CHECKING": "False",
                "ANSIBLE_TIMEOUT": "5",
                "ANSIBLE_FORKS": "10",
                "ANSIBLE_NOCOLOR": "1",
                "ANSIBLE_CALLBACK_FORMAT_PRETTY": "false",
                "ANSIBLE_CALLBACK_PLUGINS": os.path.join(HERE, "callback_plugins"),
                "ANSIBLE_CALLBACKS_ENABLED": "ssh_record",
                "ANSIBLE_LOCAL_TEMP": os.path.join(self.dir, "ansible-local"),
                "ANSIBLE_RETRY_FILES_ENABLED": "False",
                "HVM_SSH_RECORD": record,
            }
        )
        env.pop("HVM_SSH_STOP_PID", None)
        return env

    def restart_stopped(self):
        """Start the sshd that a run stopped again, for the next run."""
        old = self.sshds["stopped"]
        if old.poll() is None:
            return
        old.wait()
        self.sshds["stopped"] = self._sshd("stopped", [STOPPED_ADDRESS])

    # -- teardown

    def stop(self):
        errors = []
        for step in (self._close_masters, self._stop_sshds, self._remove_account, self._remove_files):
            try:
                step()
            except Exception as exc:  # every step runs; the first failure is reported at the end
                errors.append("%s: %s" % (step.__name__, exc))
        if errors:
            raise RuntimeError("; ".join(errors))

    def _close_masters(self):
        if not os.path.isdir(self.control_dir):
            return
        for name in os.listdir(self.control_dir):
            path = os.path.join(self.control_dir, name)
            subprocess.run(["ssh", "-o", "ControlPath=%s" % path, "-O", "exit", "fleet"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)

    def _stop_sshds(self):
        for proc in self.sshds.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=STOP_TIMEOUT)

    def _remove_account(self):
        if os.path.exists(self.sudoers):
            os.unlink(self.sudoers)
        if not self.made_account:
            return
        # A session that is still closing keeps the account busy for a moment.
        deadline = time.monotonic() + STOP_TIMEOUT
        while subprocess.run(["userdel", "--remove", self.login], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode not in (0, 6):
            if time.monotonic() > deadline:
                raise RuntimeError("could not remove account %s" % self.login)
            time.sleep(0.2)

    def _remove_files(self):
        shutil.rmtree(self.dir, ignore_errors=True)
        if self.made_privsep:
            os.rmdir(PRIVSEP_DIR)


@pytest.fixture(scope="module")
def fleet():
    if os.geteuid() != 0:
        pytest.skip("the SSH fleet needs root (accounts, sudoers, sshd)")
    if not os.access(SSHD, os.X_OK):
        pytest.fail("%s is missing: install Debian's openssh-server (./dev.sh setup does)" % SSHD)
    fleet = Fleet()
    try:
        fleet.start()
        yield fleet
    finally:
        fleet.stop()
