# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The libvirt canary's domain XML, virsh command lines, log reading and settings.

The domains themselves run in tests/agreement/test_canary_libvirt.py, against real libvirt.
"""

import os
import xml.etree.ElementTree as ET

import pytest
from ansible_collections.hypervisor.migration.plugins.module_utils import _canary, _canary_libvirt
from ansible_collections.hypervisor.migration.plugins.module_utils._accounts import resolve_account

QEMU_NS = "{http://libvirt.org/schemas/domain/qemu/1.0}"
ROOT = resolve_account("root")


def _xml(role="destination", accel="tcg", firmware="/tmp/postcopy-canary-abc/firmware.bin", emulator="/usr/bin/qemu-system-x86_64"):
    return _canary_libvirt.domain_xml("postcopy-canary-abc-" + role, emulator, accel, 64, firmware, role == "destination")


@pytest.mark.parametrize("accel, domain_type", [("tcg", "qemu"), ("kvm", "kvm")])
def test_domain_has_no_disk_no_nic_and_the_canary_firmware_as_rom(accel, domain_type):
    domain = ET.fromstring(_xml(accel=accel))
    assert domain.get("type") == domain_type
    assert domain.findtext("name") == "postcopy-canary-abc-destination"
    assert domain.find("memory").get("unit") == "MiB" and domain.findtext("memory") == "64"
    loader = domain.find("os/loader")
    assert (loader.get("type"), loader.get("readonly"), loader.text) == ("rom", "yes", "/tmp/postcopy-canary-abc/firmware.bin")
    assert domain.findtext("devices/emulator") == "/usr/bin/qemu-system-x86_64"
    assert [child.tag for child in domain.find("devices")] == ["emulator", "controller", "memballoon"]
    assert domain.find("devices/controller").get("model") == "none" and domain.find("devices/memballoon").get("model") == "none"
    assert domain.find("features/acpi") is not None  # libvirt 9.0 would pass -no-acpi, gone in QEMU 9
    assert {domain.findtext(event) for event in ("on_poweroff", "on_reboot", "on_crash")} == {"destroy"}


def test_only_the_destination_waits_for_an_incoming_migration():
    args = [arg.get("value") for arg in ET.fromstring(_xml("destination")).iter(QEMU_NS + "arg")]
    assert args == ["-incoming", "defer"]
    assert list(ET.fromstring(_xml("source")).iter(QEMU_NS + "arg")) == []
    # the same domain but for its name and -incoming: the stream from one loads into the other
    source, destination = _xml("source"), _xml("destination")
    assert destination.replace("destination", "source").split("  <qemu:commandline>")[0] + "</domain>\n" == source


def test_paths_and_names_are_escaped_not_interpreted():
    domain = ET.fromstring(_xml(firmware="/tmp/a&b<c>'\"/firmware.bin", emulator="/opt/q&q/qemu-system-x86_64"))
    assert domain.find("os/loader").text == "/tmp/a&b<c>'\"/firmware.bin"
    assert domain.findtext("devices/emulator") == "/opt/q&q/qemu-system-x86_64"


def test_domain_names_come_from_the_work_directory():
    assert _canary_libvirt.domain_name("/tmp/postcopy-canary-k2j4x9qa", "source") == "postcopy-canary-k2j4x9qa-source"
    assert _canary_libvirt.domain_name("/tmp/postcopy-canary-k2j4x9qa/", "destination") == "postcopy-canary-k2j4x9qa-destination"


def test_virsh_commands_are_argv_lists_for_the_system_uri():
    source = _canary_libvirt.LibvirtDomain("/usr/bin/virsh", "n-source", "<domain/>", paused=False)
    destination = _canary_libvirt.LibvirtDomain("/usr/bin/virsh", "n-destination", "<domain/>", paused=True)
    assert source.command == ["/usr/bin/virsh", "-q", "-c", "qemu:///system", "create", "/dev/stdin"]
    assert destination.command == source.command + ["--paused"]
    assert destination.log_path == "/var/log/libvirt/qemu/n-destination.log"


def _settings(**changes):
    values = dict(qemu_binary="/usr/bin/qemu-system-x86_64", account=ROOT, accel="tcg", memory_mb=64, timeout=60, sandbox=True,
                  launcher="libvirt", virsh="/usr/bin/virsh")
    values.update(changes)
    return _canary.CanarySettings(**values)


def test_check_mode_shows_the_virsh_commands_and_the_domains(tmp_path, monkeypatch):
    monkeypatch.setattr(_canary, "qemu_version", lambda binary, timeout: "10.0.2")
    facts = _canary.planned_facts(_settings())
    assert facts["launcher"] == "libvirt" and facts["ok"] is None
    assert facts["commands"]["destination"] == ["/usr/bin/virsh", "-q", "-c", "qemu:///system", "create", "/dev/stdin", "--paused"]
    destination = ET.fromstring(facts["domains"]["destination"])
    assert destination.findtext("name") == "<workdir>-destination"
    assert destination.find("os/loader").text == "<workdir>/firmware.bin"
    assert ET.fromstring(facts["domains"]["source"]).findtext("name") == "<workdir>-source"


def test_check_mode_of_a_bare_qemu_has_no_domains(monkeypatch):
    monkeypatch.setattr(_canary, "qemu_version", lambda binary, timeout: "10.0.2")
    facts = _canary.planned_facts(_settings(launcher="qemu", virsh=None))
    assert facts["domains"] == {} and facts["commands"]["source"][0] == "/usr/bin/qemu-system-x86_64"


def test_no_virsh_is_one_line_naming_the_package(tmp_path):
    with pytest.raises(_canary_libvirt.VirshError, match=r"^launcher libvirt needs virsh \(Debian and Ubuntu libvirt-clients"):
        _canary_libvirt.find_virsh((str(tmp_path),))


def test_a_virsh_another_account_could_replace_is_never_run(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    virsh = shared / "virsh"
    virsh.write_text("#!/bin/sh\ntouch %s/ran\n" % tmp_path)
    virsh.chmod(0o755)
    shared.chmod(0o777)
    with pytest.raises(_canary_libvirt.VirshError, match=r"^launcher libvirt: will not run .*/shared/virsh: "):
        _canary_libvirt.find_virsh((str(shared),))
    assert not os.path.exists(tmp_path / "ran")


LOG = """2026-12-01 00:38:01.000+0000: starting up libvirt version: 9.0.0, package: 9.0.0-4 (Debian), qemu version: 7.2.0
LC_ALL=C \\
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin \\
/usr/bin/qemu-system-x86_64 \\
-name guest=postcopy-canary-abc-destination,debug-threads=on \\
-msg timestamp=on
2026-12-01T00:38:02.123456Z qemu-system-x86_64: warning: host doesn't support requested feature
2026-12-01T00:38:03.123456Z qemu-system-x86_64: postcopy_ram_supported_by_host: userfaultfd not available: Operation not permitted
2026-12-01 00:38:04.000+0000: shutting down, reason=destroyed
"""


def test_qemus_words_are_its_own_lines_in_the_domain_log():
    assert _canary_libvirt.log_words(LOG) == "qemu-system-x86_64: postcopy_ram_supported_by_host: userfaultfd not available: Operation not permitted"
    assert _canary_libvirt.log_words(LOG.split("2026-12-01T", maxsplit=1)[0]) is None


def test_a_domain_log_that_is_a_link_is_not_followed(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("root's secret\n")
    (tmp_path / "n.log").symlink_to(secret)
    domain = _canary_libvirt.LibvirtDomain("/usr/bin/virsh", "n", "<domain/>", paused=False, log_dir=str(tmp_path))
    assert domain.words() is None
