# -*- coding: utf-8 -*-
# Copyright: contributors to hypervisor.migration
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The stdlib QMP client against a real QEMU (TCG, paused, no devices), and against sockets that misbehave."""

import os
import re
import shutil
import socket
import subprocess
import threading
import time

import pytest
from ansible_collections.hypervisor.migration.plugins.module_utils._qmp import (
    QMPClient,
    QMPClosed,
    QMPCommandError,
    QMPError,
    QMPTimeout,
)

QEMU = shutil.which("qemu-system-x86_64") or "/usr/bin/qemu-system-x86_64"


@pytest.fixture
def qemu(canary_tmp):
    """A paused QEMU with a QMP socket: (process, socket path). Killed and reaped afterwards."""
    if not os.access(QEMU, os.X_OK):
        pytest.skip("needs qemu-system-x86_64")
    path = os.path.join(canary_tmp, "qmp.sock")
    argv = [QEMU, "-accel", "tcg", "-S", "-display", "none", "-nodefaults", "-no-user-config", "-qmp", "unix:%s,server=on,wait=off" % path]
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    yield process, path
    process.kill()
    process.wait()
    if os.path.exists(path):
        os.unlink(path)


@pytest.fixture
def client(qemu):
    process, path = qemu
    with QMPClient(path) as connected:
        connected.connect(10, alive=lambda: process.poll() is None)
        yield connected


def is_event(name):
    return lambda event: event["event"] == name


def test_connect_reads_the_greeting_and_leaves_negotiation(client):
    assert client.greeting["version"]["qemu"]["major"] >= 2
    assert "capabilities" in client.greeting
    # Only possible once qmp_capabilities was accepted.
    assert client.execute("query-status") == {"status": "prelaunch", "singlestep": False, "running": False}


def test_execute_passes_arguments(client):
    reply = client.execute("human-monitor-command", {"command-line": "info version"})
    assert re.match(r"\d+\.\d+\.\d+", reply)


def test_qemu_error_is_raised_with_its_own_words(client):
    with pytest.raises(QMPCommandError) as error:
        client.execute("no-such-command")
    assert error.value.error_class == "CommandNotFound"
    assert str(error.value) == "The command no-such-command has not been found"
    assert error.value.command == "no-such-command"
    # The connection is still usable after an error.
    assert client.execute("query-status")["status"] == "prelaunch"


def test_events_during_a_command_are_queued_for_wait_event(client):
    client.execute("cont")
    event = client.wait_event(is_event("RESUME"), 5)
    assert event["event"] == "RESUME"
    assert "timestamp" in event


def test_non_matching_events_stay_queued_in_order(client):
    client.execute("cont")
    client.execute("stop")
    assert client.wait_event(is_event("STOP"), 5)["event"] == "STOP"
    assert [event["event"] for event in client.events()] == ["RESUME"]
    assert client.events() == []


def test_wait_event_times_out_on_time(client):
    started = time.monotonic()
    with pytest.raises(QMPTimeout):
        client.wait_event(is_event("SHUTDOWN"), 0.2)
    assert time.monotonic() - started < 1.0


def test_qemu_exiting_closes_the_client(qemu, client):
    process, _path = qemu
    process.kill()
    process.wait()
    with pytest.raises(QMPClosed):
        client.execute("query-status", timeout=5)


def test_quit_is_answered_then_the_connection_closes(client):
    assert client.execute("quit") == {}
    with pytest.raises(QMPClosed):
        client.wait_event(is_event("NEVER"), 5)


def test_connect_stops_when_qemu_exits_before_its_socket_appears(canary_tmp):
    started = time.monotonic()
    with pytest.raises(QMPClosed, match="exited before it opened its QMP socket"):
        QMPClient(os.path.join(canary_tmp, "missing.sock")).connect(10, alive=lambda: False)
    assert time.monotonic() - started < 1.0


def test_connect_times_out_when_the_socket_never_appears(canary_tmp):
    with pytest.raises(QMPTimeout, match="did not appear in time"):
        QMPClient(os.path.join(canary_tmp, "missing.sock")).connect(0.2)


@pytest.fixture
def listener(canary_tmp):
    """A unix socket that accepts but is not QEMU: (socket path, function to send bytes to the client)."""
    path = os.path.join(canary_tmp, "fake.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    accepted = []

    def accept():
        accepted.append(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()

    def send(data):
        thread.join(5)
        accepted[0].sendall(data)

    yield path, send
    for conn in accepted:
        conn.close()
    server.close()
    os.unlink(path)


def test_a_silent_peer_times_out(listener):
    path, _send = listener
    started = time.monotonic()
    with pytest.raises(QMPTimeout):
        QMPClient(path).connect(0.3)
    assert time.monotonic() - started < 1.5


@pytest.mark.parametrize(
    "first_line, message",
    [(b'{"hello": 1}\n', "expected a QMP greeting"), (b"garbage\n", "not JSON")],
)
def test_a_peer_that_does_not_speak_qmp_is_refused(listener, first_line, message):
    path, send = listener
    client = QMPClient(path)
    threading.Timer(0.1, send, args=(first_line,)).start()
    with pytest.raises(QMPError, match=message):
        client.connect(5)
    client.close()
