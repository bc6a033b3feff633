# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A fleet over real SSH on this machine, for tests/ssh and bench/: Debian's sshd, started here
with its own configuration and host key in a private directory, listening on loopback addresses
only, a login account with passwordless sudo, and root login by key.

Fleet.stop() removes everything, also after a failure: the client's ControlPersist masters, the
sshd processes (stopped and reaped), the login account with its home, the sudoers drop-in, the
directory, and /run/sshd when start() created it.
"""

import fcntl
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time

SSHD = "/usr/sbin/sshd"
PRIVSEP_DIR = "/run/sshd"
# Fleets of concurrent test and bench runs share /run/sshd: each registers here, and the last one
# out removes the directory when one of them created it.
PRIVSEP_USERS = "/run/hvm-ssh-fleet"
SUDOERS_DIR = "/etc/sudoers.d"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
# sshd listens on at most 16 sockets (MAX_LISTEN_SOCKS in OpenSSH).
MAX_ADDRESSES_PER_SSHD = 16

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
{extra}"""


def layout(addresses, name="sshd"):
    """As many sshd (name-0, name-1, ...) as listening on ``addresses`` takes, 16 addresses each."""
    chunks = [addresses[i : i + MAX_ADDRESSES_PER_SSHD] for i in range(0, len(addresses), MAX_ADDRESSES_PER_SSHD)]
    return dict(("%s-%d" % (name, n), chunk) for n, chunk in enumerate(chunks))


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
    """sshd processes (each listening on its loopback addresses, all on one port), their keys, a
    login account with passwordless sudo, and the directory that holds it all.

    ``layout`` maps a name to the addresses one sshd listens on; ``extra`` is more sshd_config.
    """

    def __init__(self, layout, extra=""):
        self.layout = dict(layout)
        self.extra = extra
        self.dir = tempfile.mkdtemp(prefix="hvm-ssh-")
        os.chmod(self.dir, 0o755)
        self.login = "hvmssh%d" % (os.getpid() % 100000)
        self.port = _free_port(next(iter(self.layout.values()))[0])
        self.sudoers = os.path.join(SUDOERS_DIR, self.login)
        self.sshds = {}
        self.registered = False
        self.made_account = False

    # -- setup

    def start(self):
        self._privsep_acquire()
        self._keys()
        self._account()
        for name, addresses in self.layout.items():
            self.sshds[name] = self._sshd(name, addresses)

    @staticmethod
    def _locked():
        os.makedirs(PRIVSEP_USERS, exist_ok=True)
        lock = open(os.path.join(PRIVSEP_USERS, "lock"), "w")
        fcntl.flock(lock, fcntl.LOCK_EX)
        return lock

    def _privsep_acquire(self):
        with self._locked():
            if not os.path.isdir(PRIVSEP_DIR):
                os.mkdir(PRIVSEP_DIR, 0o755)
                open(os.path.join(PRIVSEP_USERS, "created"), "w").close()
            open(os.path.join(PRIVSEP_USERS, "pid.%d" % os.getpid()), "w").close()
            self.registered = True

    def _privsep_release(self):
        with self._locked():
            os.unlink(os.path.join(PRIVSEP_USERS, "pid.%d" % os.getpid()))
            users = [name for name in os.listdir(PRIVSEP_USERS) if name.startswith("pid.") and os.path.exists("/proc/%s" % name[4:])]
            created = os.path.join(PRIVSEP_USERS, "created")
            if users or not os.path.exists(created):
                return
            os.rmdir(PRIVSEP_DIR)
            for name in os.listdir(PRIVSEP_USERS):
                os.unlink(os.path.join(PRIVSEP_USERS, name))
            os.rmdir(PRIVSEP_USERS)

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
            out.write(SSHD_CONFIG.format(listen=listen, dir=self.dir, login=self.login, extra=self.extra))
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

    def env(self, base=None, control_persist="30s"):
        """Ansible's environment (from ``base``, default os.environ): this fleet's key and SSH options."""
        os.makedirs(self.control_dir, exist_ok=True)
        env = dict(os.environ if base is None else base)
        ssh_args = (
            "-o ControlMaster=auto -o ControlPersist=%s -o ControlPath=%s/%%C "
            "-o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no -o LogLevel=ERROR" % (control_persist, self.control_dir)
        )
        env.update(
            {
                "ANSIBLE_SSH_ARGS": ssh_args,
                "ANSIBLE_PRIVATE_KEY_FILE": self.client_key,
                "ANSIBLE_HOST_KEY_CHECKING": "False",
                # Generous: a refused connection fails at once whatever this says, and a busy machine is slow to accept.
                "ANSIBLE_TIMEOUT": "30",
                "ANSIBLE_FORKS": "10",
                "ANSIBLE_NOCOLOR": "1",
                "ANSIBLE_LOCAL_TEMP": os.path.join(self.dir, "ansible-local"),
                "ANSIBLE_RETRY_FILES_ENABLED": "False",
            }
        )
        return env

    def restart(self, name):
        """Start sshd ``name`` again when it was stopped."""
        old = self.sshds[name]
        if old.poll() is None:
            return
        old.wait()
        self.sshds[name] = self._sshd(name, self.layout[name])

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

    def leftovers(self):
        """What of this fleet is still there (after stop(), nothing): processes, the account, files."""
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open("/proc/%s/cmdline" % pid, "rb") as handle:
                    if self.dir.encode() in handle.read():
                        found.append("process %s" % pid)
            except OSError:
                continue
        try:
            pwd.getpwnam(self.login)
            found.append("account %s" % self.login)
        except KeyError:
            pass
        found += [path for path in (self.sudoers, self.dir, os.path.join(PRIVSEP_USERS, "pid.%d" % os.getpid())) if os.path.exists(path)]
        return found

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
        while subprocess.run(["userdel", "--remove", self.login], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False).returncode not in (0, 6):
            if time.monotonic() > deadline:
                raise RuntimeError("could not remove account %s" % self.login)
            time.sleep(0.2)

    def _remove_files(self):
        shutil.rmtree(self.dir, ignore_errors=True)
        if self.registered:
            self._privsep_release()
