# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""libvirt's qemu.conf grammar, and reading the file as root without being steered or flooded."""

import ctypes
import os
import re
import resource
import shutil
import signal
import tempfile

import pytest
from ansible_collections.hypervisor.migration.plugins.module_utils import _virtconf
from ansible_collections.hypervisor.migration.plugins.module_utils._virtconf import LIST, SIGNED, STRING, UNSIGNED, ConfError, Setting
from hypothesis import given, settings
from hypothesis import strategies as st


def parse(text):
    return _virtconf.parse_conf(text, "qemu.conf")


# --------------------------------------------------------------------------------------------
# values libvirt accepts: (text, name, value, kind, line of the name)

FORMS = [
    ('user = "qemu"\n', "user", "qemu", STRING, 1),
    ("user = 'qemu'\n", "user", "qemu", STRING, 1),
    ('user = """qemu"""\n', "user", "qemu", STRING, 1),
    ('user = "+54321"\n', "user", "+54321", STRING, 1),
    ("user='qemu'", "user", "qemu", STRING, 1),
    ('user = """qemu"""', "user", "qemu", STRING, 1),
    ('\t user\t=\t"qemu"\t\n', "user", "qemu", STRING, 1),
    ("user = \"a 'b' c\"\n", "user", "a 'b' c", STRING, 1),
    ("user = 'a \"b\" c'\n", "user", 'a "b" c', STRING, 1),
    ('user = "a\\tb\\"\n', "user", "a\\tb\\", STRING, 1),
    ('user = """a "b" \'c\'"""\n', "user", "a \"b\" 'c'", STRING, 1),
    ('x = """first\nsecond\n"""\n', "x", "first\nsecond\n", STRING, 1),
    ('x = """"""\n', "x", "", STRING, 1),
    ('x = ""\n', "x", "", STRING, 1),
    ('user = "qemu" # the account\n', "user", "qemu", STRING, 1),
    ('user = "qemu"# no blank before the comment\n', "user", "qemu", STRING, 1),
    ('user = "qemu" ;\n', "user", "qemu", STRING, 1),
    ('user = "qe#mu"\n', "user", "qe#mu", STRING, 1),
    ('user = "qemu\0root"\n', "user", "qemu", STRING, 1),
    ('user = "qemu"\r\n', "user", "qemu", STRING, 1),
    ('# qemu.conf\n\n#user = "root"\n\nuser = "qemu"\n', "user", "qemu", STRING, 5),
    ('  \n\t\n# c\nuser = "qemu"\n', "user", "qemu", STRING, 4),
    ("seccomp_sandbox = 0\n", "seccomp_sandbox", 0, UNSIGNED, 1),
    ("max_files = +32768\n", "max_files", 32768, UNSIGNED, 1),
    ("x = -1729\n", "x", -1729, SIGNED, 1),
    ("x = 007\n", "x", 7, UNSIGNED, 1),
    ("x = 18446744073709551615\n", "x", 18446744073709551615, UNSIGNED, 1),
    ("x = 18446744073709551617\n", "x", 1, UNSIGNED, 1),
    ("x = -9223372036854775809\n", "x", 9223372036854775807, SIGNED, 1),
    ("x = %s\n" % ("9" * 5000), "x", (10**5000 - 1) % (1 << 64), UNSIGNED, 1),
    ('namespaces = [ "mount" ]\n', "namespaces", ["mount"], LIST, 1),
    ("namespaces = []\n", "namespaces", [], LIST, 1),
    ("namespaces = [ ]\n", "namespaces", [], LIST, 1),
    ("namespaces = [\n]\n", "namespaces", [], LIST, 1),
    ('security_driver = [ "selinux", \'apparmor\', """dac""" ]\n', "security_driver", ["selinux", "apparmor", "dac"], LIST, 1),
    (
        'cgroup_device_acl = [\n    "/dev/null", "/dev/full", "/dev/zero",\n    "/dev/kvm",\n    "/dev/userfaultfd",\n]\n',
        "cgroup_device_acl",
        ["/dev/null", "/dev/full", "/dev/zero", "/dev/kvm", "/dev/userfaultfd"],
        LIST,
        1,
    ),
    ('cgroup_device_acl = [ "/dev/null"\n  , "/dev/kvm" ]\n', "cgroup_device_acl", ["/dev/null", "/dev/kvm"], LIST, 1),
    ("tst = [ 1 , 2, [ 3, 4], 5 ]\n", "tst", [1, 2, [3, 4], 5], LIST, 1),
    ("tst = [[],[[]]]\n", "tst", [[], [[]]], LIST, 1),
    ('a = 1; b = 2\nuser = "qemu"\n', "user", "qemu", STRING, 2),
    ('x = """a\nb"""\ny = [\n1,\n2]\nuser = "qemu"\n', "user", "qemu", STRING, 6),
    ('x = """a\nb"""\ny = [\n1,\n2]\nuser = "qemu"\n', "y", [1, 2], LIST, 3),
]


@pytest.mark.parametrize("text, name, value, kind, line", FORMS)
def test_libvirt_forms(text, name, value, kind, line):
    conf = parse(text)
    assert conf.errors == []
    assert conf.settings[name] == Setting(value, line, kind)


@pytest.mark.parametrize("text", ['user = "+54321"\n', "user = '+54321'\n", 'user = """+54321"""\n'])
def test_numeric_user_form_is_a_string_in_every_quoting(text):
    # libvirt reads "+N" as a uid only from a string; the accessor must hand it over, never None.
    assert parse(text).string("user") == "+54321"


def test_unquoted_plus_number_is_a_number_not_a_user():
    with pytest.raises(ConfError) as error:
        parse("\nuser = +54321\n").string("user")
    assert str(error.value) == "qemu.conf line 2: user must be a string, got the number 54321"


def test_blank_and_empty_files():
    assert parse("").settings == {} and parse("").errors == []
    assert parse("# only a comment").errors == []
    assert parse("#c\n \n\t\n").errors == []
    # libvirt asks for a name when a file holds only blanks and newlines.
    assert parse(" \n\n").errors == ["qemu.conf line 3: expecting a name"]


# --------------------------------------------------------------------------------------------
# what libvirt refuses: (text, the one-line error)

ERRORS = [
    ('user = "qemu\n', 'qemu.conf line 1: unterminated string (" ... " must close on the same line)'),
    ("\nuser = 'qemu\n", "qemu.conf line 2: unterminated string (' ... ' must close on the same line)"),
    ("user = 'qe\nmu'\n", "qemu.conf line 1: unterminated string (' ... ' must close on the same line)"),
    ('x = 1\nuser = """qemu\n\n', 'qemu.conf line 2: unterminated string (the """ opened here is never closed)'),
    ('user = """"""', "qemu.conf line 1: expecting a separator"),
    ("user = qemu\n", "qemu.conf line 1: expecting a value"),
    ("user =\n", "qemu.conf line 1: expecting a value"),
    ("user = \n", "qemu.conf line 1: expecting a value"),
    ("user =", "qemu.conf line 1: expecting a value"),
    ("user\n= 'qemu'\n", "qemu.conf line 1: expecting an assignment"),
    ("user : 'qemu'\n", "qemu.conf line 1: expecting an assignment"),
    ("user.name = 'qemu'\n", "qemu.conf line 1: expecting an assignment"),
    ("1user = 'qemu'\n", "qemu.conf line 1: expecting a name"),
    ("_user = 'qemu'\n", "qemu.conf line 1: expecting a name"),
    ("x = 1\n\n  garbage here\n", "qemu.conf line 3: expecting an assignment"),
    ("x = 1\n=2\n", "qemu.conf line 2: expecting a name"),
    ("x = 1;;\n", "qemu.conf line 1: expecting a name"),
    ("x = 1 y = 2\n", "qemu.conf line 1: expecting a separator"),
    ("x = 12abc\n", "qemu.conf line 1: expecting a separator"),
    ('x = "a" "b"\n', "qemu.conf line 1: expecting a separator"),
    ('x = "a\\"b"\n', "qemu.conf line 1: expecting a separator"),
    ("x = -\n", "qemu.conf line 1: unterminated number"),
    ("x = +", "qemu.conf line 1: unterminated number"),
    ("x = \f1\n", "qemu.conf line 1: expecting a value"),
    ('namespaces = [ "mount"\n', "qemu.conf line 2: list is not closed with ] (the list opens on line 1)"),
    ('namespaces = [ "mount", \n', "qemu.conf line 2: expecting a value"),
    ('namespaces = [ "mount" "pid" ]\n', "qemu.conf line 1: expecting a separator in list"),
    ("namespaces = [ , ]\n", "qemu.conf line 1: expecting a value"),
    ('namespaces = [ "mount",, ]\n', "qemu.conf line 1: expecting a value"),
    (
        'cgroup_device_acl = [\n  "/dev/null",\n# "/dev/kvm",\n  "/dev/userfaultfd"\n]\n',
        "qemu.conf line 3: expecting a value (libvirt allows no comments inside a list)",
    ),
    ('cgroup_device_acl = [\n  "/dev/null" # null\n]\n', "qemu.conf line 2: expecting a separator in list (libvirt allows no comments inside a list)"),
    ("x = %s1%s\n" % ("[" * 65, "]" * 65), "qemu.conf line 1: lists nested deeper than 64 levels"),
]


@pytest.mark.parametrize("text, message", ERRORS)
def test_libvirt_refuses(text, message):
    conf = parse(text)
    assert conf.errors == [message]
    assert not conf.ok


def test_error_keeps_earlier_settings_and_accessors_refuse_to_judge():
    conf = parse('user = "qemu"\ngroup = "kvm"\nnamespaces = [ "mount"\n')
    assert conf.settings["user"] == Setting("qemu", 1, STRING)
    assert sorted(conf.settings) == ["group", "user"]
    for accessor in (conf.string, conf.number, conf.boolean, conf.string_list):
        with pytest.raises(ConfError) as error:
            accessor("user")
        assert str(error.value) == "qemu.conf line 4: list is not closed with ] (the list opens on line 3); user cannot be judged"


def test_first_assignment_wins_as_in_libvirt():
    conf = parse('user = "qemu"\n# later\nuser = "root"\n')
    assert conf.string("user") == "qemu"
    assert conf.notes == ["qemu.conf line 3: user is set again; libvirt uses the first value, line 1"]


def test_bytes_keep_what_is_not_utf8():
    conf = _virtconf.parse_conf(b'# caf\xe9\nuser = "qemu\xff"\n', "qemu.conf")
    assert conf.string("user").encode("utf-8", "surrogateescape") == b"qemu\xff"


# --------------------------------------------------------------------------------------------
# typed accessors, as libvirt's getters type them


def test_accessors_on_the_right_types():
    conf = parse('user = "qemu"\nx = -3\ndynamic_ownership = 0\nnamespaces = [ "mount" ]\nsecurity_driver = "none"\n')
    assert conf.string("user") == "qemu"
    assert conf.number("x") == -3
    assert conf.boolean("dynamic_ownership") is False
    assert conf.string_list("namespaces") == ["mount"]
    assert conf.string_list("security_driver", allow_string=True) == ["none"]
    for accessor in (conf.string, conf.number, conf.boolean, conf.string_list):
        assert accessor("not_set") is None


@pytest.mark.parametrize(
    "text, accessor, message",
    [
        ('\n\nuser = [ "qemu" ]\n', "string", "qemu.conf line 3: user must be a string, got a list"),
        ("user = 107\n", "string", "qemu.conf line 1: user must be a string, got the number 107"),
        ('x = "1"\n', "number", "qemu.conf line 1: x must be a number, got a string"),
        ("x = [ 1 ]\n", "number", "qemu.conf line 1: x must be a number, got a list"),
        ("dynamic_ownership = 2\n", "boolean", "qemu.conf line 1: dynamic_ownership must be 0 or 1, got the number 2"),
        ("dynamic_ownership = -1\n", "boolean", "qemu.conf line 1: dynamic_ownership must be 0 or 1, got the signed number -1"),
        ("dynamic_ownership = -0\n", "boolean", "qemu.conf line 1: dynamic_ownership must be 0 or 1, got the signed number 0"),
        ('dynamic_ownership = "1"\n', "boolean", "qemu.conf line 1: dynamic_ownership must be 0 or 1, got a string"),
        ('namespaces = "mount"\n', "string_list", "qemu.conf line 1: namespaces must be a list of strings, got a string"),
        ("namespaces = [ 1 ]\n", "string_list", "qemu.conf line 1: namespaces must be a list of strings, got a list holding the number 1"),
        ('namespaces = [ "a", [ "b" ] ]\n', "string_list", "qemu.conf line 1: namespaces must be a list of strings, got a list holding a list"),
    ],
)
def test_wrong_type_is_a_one_line_error(text, accessor, message):
    conf = parse(text)
    with pytest.raises(ConfError) as error:
        getattr(conf, accessor)(sorted(conf.settings)[0])
    assert str(error.value) == message


def test_string_or_list_refuses_a_number():
    with pytest.raises(ConfError, match="security_driver must be a list of strings or a string, got the number 1"):
        parse("security_driver = 1\n").string_list("security_driver", allow_string=True)


# --------------------------------------------------------------------------------------------
# the shapes of libvirt's own test data (tests/virconfdata, tests/virconftest.c)


def test_xen_config_shape():
    conf = parse(
        'kernel="/boot/vmlinuz"\nmemory = 128 # should be enough\nname = "fc4"\n'
        "vif = [ 'mac=aa:00:00:00:00:11, bridge=xenbr0' ]\ndisk = ['file:/xen/fc4.img,sda1,w']\n"
        "# just for testing ...\ntst = [ 1 , 2, [ 3, 4], 5 ]\n"
    )
    assert conf.errors == []
    assert conf.number("memory") == 128
    assert conf.string_list("vif") == ["mac=aa:00:00:00:00:11, bridge=xenbr0"]
    assert conf.settings["tst"] == Setting([1, 2, [3, 4], 5], 7, LIST)


def test_daemon_config_shape():
    conf = parse(
        "# Master libvirt daemon configuration file\n#\n\n\nlisten_tls = 0\n\n\n\n"
        'tls_port = "16514"\nunix_sock_group = "libvirt"\n'
        'tls_allowed_dn_list = ["DN1", "DN2"]\nsasl_allowed_username_list = ["joe@EXAMPLE.COM", "fred@EXAMPLE.COM" ]\n'
        '\nhost_uuid = "8510b1a1-1afa-4da6-8111-785fae202c1e"\n'
    )
    assert conf.errors == []
    assert conf.boolean("listen_tls") is False
    assert conf.string("tls_port") == "16514"
    assert conf.string_list("sasl_allowed_username_list") == ["joe@EXAMPLE.COM", "fred@EXAMPLE.COM"]
    assert conf.settings["host_uuid"].line == 14


def test_memory_without_final_newline():
    conf = parse("ullong = '123456789'\nstring = 'foo'\nuint = 12345")
    assert (conf.string("ullong"), conf.string("string"), conf.number("uint")) == ("123456789", "foo", 12345)


def test_integer_kinds():
    conf = parse('int = -1729\nuint = 1729\nllong = -6963472309248\nullong = 6963472309248\nstring = "foo"\n')
    kinds = dict((name, (s.value, s.kind)) for name, s in conf.settings.items())
    assert kinds["int"] == (-1729, SIGNED) and kinds["uint"] == (1729, UNSIGNED)
    assert kinds["llong"] == (-6963472309248, SIGNED) and kinds["ullong"] == (6963472309248, UNSIGNED)


def test_bool_and_string_list_getters():
    conf = parse('false = 0\ntrue = 1\nint = 6963472309248\nstring_list = ["foo", "bar"]\nstring = "foo"\n')
    assert (conf.boolean("false"), conf.boolean("true")) == (False, True)
    with pytest.raises(ConfError):
        conf.boolean("int")
    assert conf.string_list("string_list") == ["foo", "bar"]
    with pytest.raises(ConfError):
        conf.string_list("string")
    assert conf.string_list("string", allow_string=True) == ["foo"]


def qemu_conf_shape(settings_block):
    """A file shaped like a packaged qemu.conf: ~1000 lines of commented-out examples around some settings."""
    commented = []
    for index in range(120):
        commented += ["# Setting number %d, described over a few lines of prose." % index, "#", '#example_%d = "value"' % index, "#", ""]
    commented += ["#cgroup_device_acl = [", '#    "/dev/null", "/dev/full", "/dev/zero",', '#    "/dev/kvm"', "#]", ""]
    return "\n".join(commented * 2) + "\n" + settings_block + "\n" + "\n".join(commented)


def test_packaged_file_shape():
    text = qemu_conf_shape('user = "+64055"\ngroup = "kvm"\nnamespaces = []\ncgroup_device_acl = [\n    "/dev/null",\n    "/dev/userfaultfd"\n]')
    assert text.count("\n") > 1000
    conf = parse(text)
    assert conf.errors == []
    assert sorted(conf.settings) == ["cgroup_device_acl", "group", "namespaces", "user"]
    assert conf.settings["user"].line == text[: text.index("user =")].count("\n") + 1
    assert conf.string_list("cgroup_device_acl") == ["/dev/null", "/dev/userfaultfd"]
    assert parse(qemu_conf_shape("")).settings == {}


# --------------------------------------------------------------------------------------------
# reading as root


@pytest.fixture
def trusted_dir(root):
    """A directory only root controls: under /run (root's, 0755), created 0700."""
    path = tempfile.mkdtemp(prefix="hvm-virtconf-", dir="/run")
    try:
        assert _virtconf.path_trusted(path), _virtconf.untrusted_reason(path)
        yield path
    finally:
        shutil.rmtree(path)


def write(path, text, mode=0o644):
    with open(path, "w") as handle:
        handle.write(text)
    os.chmod(path, mode)
    return path


def test_reads_a_trusted_file(trusted_dir):
    path = write(os.path.join(trusted_dir, "qemu.conf"), "user = 'qemu'\n")
    assert _virtconf.read_conf(path) == _virtconf.FileText(_virtconf.READ, "user = 'qemu'\n", None)
    conf = _virtconf.load_conf(path)
    assert (conf.string("user"), conf.source, conf.absent) == ("qemu", path, False)


def test_missing_file_is_absent_not_an_error(trusted_dir):
    for path in (os.path.join(trusted_dir, "qemu.conf"), os.path.join(trusted_dir, "no-dir", "qemu.conf")):
        assert _virtconf.read_conf(path) == _virtconf.FileText(_virtconf.ABSENT, None, None)
        conf = _virtconf.load_conf(path)
        assert conf.absent and conf.ok and conf.string("user") is None


def peak_rss_kib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def test_oversized_sparse_file_is_refused_unread(trusted_dir):
    path = os.path.join(trusted_dir, "qemu.conf")
    with open(path, "wb") as handle:
        handle.truncate(300 * 1024 * 1024)
    before = peak_rss_kib()
    result = _virtconf.read_conf(path)
    assert peak_rss_kib() - before < 32 * 1024
    assert result.state == _virtconf.REFUSED
    assert result.error == "%s is larger than the limit of 10485760 bytes (libvirt refuses a file over 10485760 bytes too); not read" % path
    with pytest.raises(ConfError, match="not read; user cannot be judged"):
        _virtconf.load_conf(path).string("user")


def test_limit_is_libvirts_exactly(trusted_dir):
    path = os.path.join(trusted_dir, "qemu.conf")
    write(path, "#" * 99 + "\n")
    assert _virtconf.read_conf(path, max_bytes=100).state == _virtconf.READ
    write(path, "#" * 100 + "\n")
    assert _virtconf.read_conf(path, max_bytes=100).state == _virtconf.REFUSED


def test_read_is_bounded_where_the_size_is_not_known():
    # /proc files claim size 0 and hold more: only the bounded read can tell.
    result = _virtconf.read_conf("/proc/self/status", max_bytes=64, require_trusted=False)
    assert result.state == _virtconf.REFUSED and "larger than the limit of 64 bytes" in result.error


def test_symlink_to_dev_zero_is_refused(trusted_dir):
    path = os.path.join(trusted_dir, "qemu.conf")
    os.symlink("/dev/zero", path)
    assert _virtconf.read_conf(path, require_trusted=False).error == "%s is a character device, not a regular file; not read" % path
    refused = _virtconf.read_conf(path)
    assert refused.state == _virtconf.REFUSED and refused.text is None


class Hung(Exception):
    pass


def test_fifo_is_refused_without_hanging(trusted_dir):
    path = os.path.join(trusted_dir, "qemu.conf")
    os.mkfifo(path, 0o600)

    def hung(signum, frame):
        raise Hung("read_conf blocked on a FIFO")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.setitimer(signal.ITIMER_REAL, 5)
    try:
        result = _virtconf.read_conf(path)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert result == _virtconf.FileText(_virtconf.REFUSED, None, "%s is a FIFO, not a regular file; not read" % path)


def test_directory_is_refused(trusted_dir):
    path = os.path.join(trusted_dir, "qemu.conf")
    os.mkdir(path)
    assert _virtconf.read_conf(path).error == "%s is a directory, not a regular file; not read" % path


@pytest.fixture
def open_dir(trusted_dir):
    """A directory any account can write and rename in (mode 0777: not sticky, unlike /tmp), inside the trusted one."""
    path = os.path.join(trusted_dir, "open")
    os.mkdir(path)
    os.chmod(path, 0o777)
    return path


def test_world_writable_directory_is_refused(open_dir):
    path = write(os.path.join(open_dir, "qemu.conf"), "user = 'qemu'\n")
    assert not _virtconf.path_trusted(path)
    assert _virtconf.untrusted_reason(path) == open_dir + " is writable by accounts other than root (mode 0777)"
    result = _virtconf.read_conf(path)
    assert result == _virtconf.FileText(_virtconf.REFUSED, None, "%s: %s is writable by accounts other than root (mode 0777); not read" % (path, open_dir))
    assert _virtconf.read_conf(path, require_trusted=False).state == _virtconf.READ


@pytest.mark.parametrize(
    "mode, owner, reason",
    [
        (0o664, 0, "is writable by accounts other than root (mode 0664)"),
        (0o646, 0, "is writable by accounts other than root (mode 0646)"),
        (0o644, 65534, "is owned by uid 65534, not root"),
    ],
)
def test_file_another_account_can_change_is_refused(trusted_dir, mode, owner, reason):
    path = write(os.path.join(trusted_dir, "qemu.conf"), "user = 'qemu'\n", mode)
    os.chown(path, owner, 0)
    assert _virtconf.untrusted_reason(path) == path + " " + reason
    assert _virtconf.read_conf(path).state == _virtconf.REFUSED


def test_subdirectory_another_account_can_change_is_refused(trusted_dir):
    sub = os.path.join(trusted_dir, "libvirt")
    os.mkdir(sub)
    path = write(os.path.join(sub, "qemu.conf"), "user = 'qemu'\n")
    os.chmod(sub, 0o775)
    assert _virtconf.untrusted_reason(path) == sub + " is writable by accounts other than root (mode 0775)"
    os.chmod(sub, 0o755)
    os.chown(sub, 65534, 0)
    assert _virtconf.untrusted_reason(path) == sub + " is owned by uid 65534, not root"
    # The file is not looked at when the directory is refused: missing there is still refused.
    assert _virtconf.read_conf(os.path.join(sub, "missing.conf")).state == _virtconf.REFUSED


def test_symlink_to_a_trusted_file_is_followed(trusted_dir):
    real = write(os.path.join(trusted_dir, "qemu.conf.real"), "user = 'qemu'\n")
    os.mkdir(os.path.join(trusted_dir, "etc"))
    path = os.path.join(trusted_dir, "etc", "qemu.conf")
    os.symlink("../qemu.conf.real", path)
    assert _virtconf.path_trusted(path)
    assert _virtconf.load_conf(path).string("user") == "qemu"
    assert os.path.realpath(path) == real


def test_symlink_into_an_untrusted_place_is_refused(trusted_dir, open_dir):
    target = write(os.path.join(open_dir, "qemu.conf"), "user = 'root'\n")
    path = os.path.join(trusted_dir, "qemu.conf")
    os.symlink(target, path)
    assert _virtconf.untrusted_reason(path) == open_dir + " is writable by accounts other than root (mode 0777)"
    assert _virtconf.load_conf(path).errors[0].startswith(path + ": " + open_dir + " is writable")


def test_link_chain_through_an_untrusted_directory_is_refused(trusted_dir, open_dir):
    # qemu.conf -> open/hop -> real.conf: the target is root's, but the hop sits where anyone can
    # swap it; checking the final path alone (realpath) would miss it.
    real = write(os.path.join(trusted_dir, "real.conf"), "user = 'qemu'\n")
    hop = os.path.join(open_dir, "hop")
    os.symlink(real, hop)
    path = os.path.join(trusted_dir, "qemu.conf")
    os.symlink(hop, path)
    assert os.path.realpath(path) == real
    assert _virtconf.untrusted_reason(path) == open_dir + " is writable by accounts other than root (mode 0777)"


def test_symlink_loop_is_refused(trusted_dir):
    path = os.path.join(trusted_dir, "qemu.conf")
    os.symlink(path, path)
    assert "Too many levels of symbolic links" in _virtconf.untrusted_reason(path)
    assert _virtconf.read_conf(path).state == _virtconf.REFUSED


def test_relative_and_missing_paths_are_not_trusted(trusted_dir):
    assert _virtconf.untrusted_reason("etc/libvirt/qemu.conf") == "etc/libvirt/qemu.conf is not an absolute path"
    missing = os.path.join(trusted_dir, "missing")
    assert _virtconf.untrusted_reason(missing) == missing + " cannot be checked: No such file or directory"


def test_system_paths():
    assert _virtconf.path_trusted("/etc/passwd")
    # Sticky (/tmp): only an entry's owner may rename or replace it, and that owner is checked next.
    assert _virtconf.untrusted_reason("/tmp") is None


# --------------------------------------------------------------------------------------------
# agreement with libvirt's own parser: Debian's libvirt0 (installed by dev.sh) exports virconf.c's
# functions as private symbols; the same texts go through both parsers.


class LibvirtValue(ctypes.Structure):
    pass


# virconf.h: struct _virConfValue, and virConfType's order (NONE, LLONG, ULLONG, STRING, LIST).
LibvirtValue._fields_ = [
    ("type", ctypes.c_int),
    ("next", ctypes.POINTER(LibvirtValue)),
    ("l", ctypes.c_longlong),
    ("str", ctypes.c_char_p),
    ("list", ctypes.POINTER(LibvirtValue)),
]
LIBVIRT_KINDS = {1: SIGNED, 2: UNSIGNED, 3: STRING, 4: LIST}
WALK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(LibvirtValue), ctypes.c_void_p)
QUIET = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)(lambda data, error: None)
LIBVIRT_ERROR = re.compile(r"memory conf:(\d+): (.*)$")


@pytest.fixture(scope="module")
def libvirt():
    try:
        lib = ctypes.CDLL("libvirt.so.0")
    except OSError:
        pytest.skip("libvirt.so.0 is missing: ./dev.sh setup installs Debian's libvirt0")
    assert lib.virInitialize() == 0
    lib.virSetErrorFunc(None, QUIET)
    lib.virConfReadString.restype = ctypes.c_void_p
    lib.virConfReadString.argtypes = [ctypes.c_char_p, ctypes.c_uint]
    lib.virConfGetValue.restype = ctypes.POINTER(LibvirtValue)
    lib.virConfGetValue.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.virConfWalk.argtypes = [ctypes.c_void_p, WALK, ctypes.c_void_p]
    lib.virConfFree.argtypes = [ctypes.c_void_p]
    lib.virGetLastErrorMessage.restype = ctypes.c_char_p
    return lib


def libvirt_value(pointer):
    value = pointer.contents
    kind = LIBVIRT_KINDS[value.type]
    if kind == STRING:
        return value.str.decode("utf-8", "surrogateescape"), kind
    if kind == UNSIGNED:
        return value.l % (1 << 64), kind
    if kind == SIGNED:
        return value.l, kind
    items, item = [], value.list
    while item:
        items.append(libvirt_value(item)[0])
        item = item.contents.next
    return items, kind


def libvirt_reads(lib, text):
    """({name: (value, kind)} as libvirt's getters see it, None), or (None, (line, message)) when it refuses."""
    conf = lib.virConfReadString(text.encode("utf-8", "surrogateescape"), 0)
    if not conf:
        line, message = LIBVIRT_ERROR.search(lib.virGetLastErrorMessage().decode()).groups()
        return None, (int(line), message)
    try:
        names = []
        lib.virConfWalk(conf, WALK(lambda name, value, data: names.append(name) or 0), None)
        return dict((name.decode(), libvirt_value(lib.virConfGetValue(conf, name))) for name in names), None
    finally:
        lib.virConfFree(conf)


def assert_agrees(lib, text):
    expected, refusal = libvirt_reads(lib, text)
    conf = parse(text)
    if refusal is None:
        assert conf.errors == []
        assert dict((name, (s.value, s.kind)) for name, s in conf.settings.items()) == expected
        return
    assert len(conf.errors) == 1
    line, message = refusal
    ours = LINE_MESSAGE.match(conf.errors[0])
    assert ours.group(2).startswith(message)
    # An unterminated """ string is named where it opens; libvirt names the end of the file.
    if '"""' not in ours.group(2):
        assert int(ours.group(1)) == line


LINE_MESSAGE = re.compile(r"qemu\.conf line (\d+): (.*)$")
EXAMPLES = int(os.environ.get("HVM_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=not os.environ.get("HVM_FUZZ_RANDOM"))
TOKENS = ["user", "x_1", "a", "1", "-", "+", "07", "=", " = ", " ", "\t", "\n", "\r", ";", "#", "# c\n", '"', "'", '"""', "[", "]", ",", "\\", "é", "\f", "_"]
NAME = st.sampled_from(["user", "group", "namespaces", "cgroup_device_acl", "x"])
BLANK = st.sampled_from(["", " ", "\t", " \t "])
EOL = st.sampled_from(["\n", "\r\n", "\n\n", "\n  \n"])
SCALAR = st.one_of(
    st.text(alphabet="qemu+1 #'\\[],", max_size=6).map(lambda s: '"%s"' % s.replace('"', "")),
    st.text(alphabet='qemu+1 #"\\[],', max_size=6).map(lambda s: "'%s'" % s.replace("'", "")),
    st.text(alphabet="qemu\n'\" #", max_size=8).map(lambda s: '"""%s"""' % s.replace('"""', "")),
    st.integers(min_value=-(1 << 70), max_value=1 << 70).map(str),
    st.integers(min_value=0, max_value=1 << 70).map(lambda n: "+%d" % n),
)
VALUE = st.recursive(
    SCALAR,
    lambda inner: st.tuples(st.lists(st.tuples(BLANK, inner, st.sampled_from(["", "\n", " \n "])), max_size=4), st.booleans()).map(
        lambda spec: "[" + ",".join(a + v + b for a, v, b in spec[0]) + ("," if spec[1] and spec[0] else "") + "]"
    ),
    max_leaves=6,
)
STATEMENT = st.one_of(
    st.tuples(BLANK, NAME, BLANK, BLANK, VALUE, BLANK, st.sampled_from(["", "# note"])).map(lambda p: "%s%s%s=%s%s%s%s" % p),
    st.sampled_from(["#", "# comment", '#user = "root"', ""]),
)
SEPARATOR = st.one_of(EOL, st.sampled_from([";", " ; ", ";\n"]))


@FUZZ
@given(st.lists(st.sampled_from(TOKENS), max_size=40).map("".join))
def test_agrees_with_libvirt_on_token_soup(libvirt, text):
    assert_agrees(libvirt, text)


@FUZZ
@given(st.lists(st.tuples(STATEMENT, SEPARATOR), max_size=8).map(lambda parts: "".join(s + sep for s, sep in parts)), st.sampled_from(["", "\n", "x"]))
def test_agrees_with_libvirt_on_config_files(libvirt, text, tail):
    assert_agrees(libvirt, text + tail)


# Not compared: a NUL (libvirt's string reader stops there before parsing), and lists nested past
# MAX_LIST_DEPTH (libvirt recurses on; this reader refuses to judge).
@pytest.mark.parametrize("text", [form[0] for form in FORMS if "\0" not in form[0]] + [error[0] for error in ERRORS if "nested" not in error[1]])
def test_the_tables_agree_with_libvirt(libvirt, text):
    assert_agrees(libvirt, text)


def test_packaged_file_shape_agrees_with_libvirt(libvirt):
    assert_agrees(libvirt, qemu_conf_shape('user = "+64055"\nnamespaces = []\ncgroup_device_acl = [\n    "/dev/null",\n    "/dev/userfaultfd"\n]'))
