# -*- coding: utf-8 -*-
# Copyright: hypervisor.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A small QMP client over a unix socket, standard library only.

Managed hosts rarely have QEMU's own Python packages, and the canary needs only a few
synchronous commands and the MIGRATION events, so this speaks the wire protocol itself:
one JSON object per line, a greeting, ``qmp_capabilities``, then commands tagged with an
``id`` whose answers may arrive after asynchronous events. Every wait has a deadline,
enforced with socket timeouts, so a hung QEMU cannot hang the module.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import json
import socket
import struct
import time
from collections import deque

__all__ = [
    "QMPClient",
    "QMPClosed",
    "QMPCommandError",
    "QMPError",
    "QMPTimeout",
]

_RECV_SIZE = 65536
# The socket appears a moment after QEMU starts: look often, it costs nothing.
_CONNECT_RETRY = 0.01
# A socket file that exists while nobody listens yet refuses; so does a missing one.
_NOT_LISTENING = (errno.ENOENT, errno.ECONNREFUSED)


class QMPError(Exception):
    """Talking to QEMU failed."""


class QMPTimeout(QMPError):
    """QEMU did not answer, or the awaited event did not come, before the deadline."""


class QMPClosed(QMPError):
    """QEMU closed the connection or never opened its socket, usually because it exited."""


class QMPCommandError(QMPError):
    """QEMU answered a command with an error; str() is QEMU's own message."""

    def __init__(self, command, error):
        self.command = command
        self.error_class = error.get("class", "GenericError")
        self.desc = error.get("desc", "")
        super(QMPCommandError, self).__init__(self.desc or self.error_class)


def _remaining(deadline):
    return deadline - time.monotonic()


class QMPClient:
    """One QMP connection: ``connect()``, then ``execute()`` and ``wait_event()``."""

    def __init__(self, path, peer_pid=None):
        self.path = path
        # The socket lies in a directory QEMU's account can write: it could put another
        # socket there. Nothing is sent until the kernel says the peer is our QEMU.
        self.peer_pid = peer_pid
        self.greeting = None
        self._sock = None
        self._buffer = b""
        self._events = deque()
        self._last_id = 0

    def connect(self, timeout, alive=None):
        """Connect, read the greeting and leave negotiation mode, all within timeout seconds.

        QEMU creates its socket only after it has parsed its command line, so a missing
        socket is retried; ``alive()`` returning False (QEMU exited) stops the retries early.
        """
        deadline = time.monotonic() + timeout
        self._sock = self._open_socket(deadline, alive)
        greeting = self._read_message(deadline)
        if "QMP" not in greeting:
            raise QMPError("%s: expected a QMP greeting, got %s" % (self.path, json.dumps(greeting)[:200]))
        self.greeting = greeting["QMP"]
        self.execute("qmp_capabilities", timeout=_remaining(deadline))
        return self

    def _open_socket(self, deadline, alive):
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(max(_remaining(deadline), 0.001))
                sock.connect(self.path)
                self._check_peer(sock)
                return sock
            except socket.timeout:
                sock.close()
                raise QMPTimeout("%s: connecting timed out" % self.path) from None
            except OSError as exc:
                sock.close()
                if exc.errno not in _NOT_LISTENING:
                    raise QMPError("%s: %s" % (self.path, exc.strerror or exc)) from None
            if alive is not None and not alive():
                raise QMPClosed("%s: QEMU exited before it opened its QMP socket" % self.path)
            if _remaining(deadline) <= 0:
                raise QMPTimeout("%s: QMP socket did not appear in time" % self.path)
            time.sleep(_CONNECT_RETRY)

    def _check_peer(self, sock):
        if self.peer_pid is None:
            return
        pid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))[0]
        if pid != self.peer_pid:
            sock.close()
            raise QMPError("%s: the socket belongs to process %d, not to QEMU (%d); refusing to talk to it" % (self.path, pid, self.peer_pid))

    def close(self):
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def execute(self, command, arguments=None, timeout=10.0):
        """Run one command; its "return" value, or QMPCommandError carrying QEMU's message."""
        deadline = time.monotonic() + timeout
        self._last_id += 1
        request = {"execute": command, "id": self._last_id}
        if arguments:
            request["arguments"] = arguments
        self._send(request, deadline)
        while True:
            message = self._read_message(deadline)
            if "event" in message:
                self._events.append(message)
            elif message.get("id") == self._last_id:
                if "error" in message:
                    raise QMPCommandError(command, message["error"])
                return message.get("return")
            # Anything else answers an earlier request that timed out: it is stale.

    def wait_event(self, match, timeout):
        """The first event (queued or new) for which match(event) is true; it is taken off the queue.

        Events that do not match stay queued, in order, for later waits and for events().
        """
        deadline = time.monotonic() + timeout
        for event in list(self._events):
            if match(event):
                self._events.remove(event)
                return event
        while True:
            message = self._read_message(deadline)
            if "event" not in message:
                continue
            if match(message):
                return message
            self._events.append(message)

    def events(self):
        """Every event received but not yet taken, oldest first; the queue is emptied."""
        taken = list(self._events)
        self._events.clear()
        return taken

    def _send(self, message, deadline):
        if self._sock is None:
            raise QMPClosed("%s: not connected" % self.path)
        self._sock.settimeout(max(_remaining(deadline), 0.001))
        try:
            self._sock.sendall(json.dumps(message).encode("utf-8") + b"\n")
        except socket.timeout:
            raise QMPTimeout("%s: sending %s timed out" % (self.path, message.get("execute"))) from None
        except OSError as exc:
            raise QMPClosed("%s: %s" % (self.path, exc.strerror or exc)) from None

    def _read_message(self, deadline):
        """The next complete JSON line from QEMU."""
        while b"\n" not in self._buffer:
            self._buffer += self._recv(deadline)
        line, self._buffer = self._buffer.split(b"\n", 1)
        try:
            return json.loads(line.decode("utf-8"))
        except ValueError:
            raise QMPError("%s: QEMU sent a line that is not JSON: %r" % (self.path, line[:200])) from None

    def _recv(self, deadline):
        if self._sock is None:
            raise QMPClosed("%s: not connected" % self.path)
        remaining = _remaining(deadline)
        if remaining <= 0:
            raise QMPTimeout("%s: no answer from QEMU in time" % self.path)
        self._sock.settimeout(remaining)
        try:
            chunk = self._sock.recv(_RECV_SIZE)
        except socket.timeout:
            raise QMPTimeout("%s: no answer from QEMU in time" % self.path) from None
        except OSError as exc:
            raise QMPClosed("%s: %s" % (self.path, exc.strerror or exc)) from None
        if not chunk:
            raise QMPClosed("%s: QEMU closed the connection" % self.path)
        return chunk
