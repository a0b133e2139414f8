"""The libvirt hook's fast path, served: the hook hands a domain's start or
stop to this thread (libvirt_hook.handoff), which does it through the same
phases as the hook would, with its own Host (the engine imported, caches
warm). The socket is root's only; a request for another store gets no
answer, so that its hook does the change itself."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from typing import Optional

from engine.errors import NwfilterError
from engine.host import Host
from libvirt_hook import BIND, UNBIND
from libvirt_hook.handoff import SOCKET_DIR, normpath, read_all, socket_path
from libvirt_hook.phases import run

LOG = logging.getLogger("vmguard-learner")
MAX_REQUEST = 4 << 20  # a domain XML with its metadata


class HookServer(threading.Thread):
    def __init__(self, host: Host) -> None:
        super().__init__(name="libvirt-hook", daemon=True)
        self.host = host
        self.path = socket_path(host.store.root)
        os.makedirs(SOCKET_DIR, mode=0o700, exist_ok=True)
        if os.path.exists(self.path):
            os.unlink(self.path)  # a socket left by a service that was killed (one service per store: we hold its lock)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # root only from its creation on
        try:
            self.sock.bind(self.path)
        finally:
            os.umask(old)
        self.sock.listen(16)

    def close(self) -> None:
        """Stop listening and remove the socket (a hook then does its changes itself)."""
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        self.sock.close()

    def run(self) -> None:
        while True:
            try:
                conn, _address = self.sock.accept()
            except OSError as exc:
                if self.sock.fileno() < 0:
                    return  # closed: the service is stopping
                LOG.warning("libvirt hook: cannot accept (%s)", exc)
                time.sleep(0.1)  # out of file descriptors, say: not a busy loop
                continue
            with conn:
                try:
                    conn.settimeout(10)
                    answer = self.answer(_request(conn))
                    if answer is not None:
                        conn.sendall(json.dumps(answer).encode())
                except (OSError, ValueError) as exc:
                    LOG.warning("libvirt hook: a request failed (%s); the hook does it itself", exc)

    def answer(self, request: dict) -> Optional[dict]:
        """{"done": ports} or {"error": one line}; None (no answer: the hook
        does it itself) for another store's request or an unexpected failure."""
        operation = request.get("operation")
        if normpath(request.get("root")) != normpath(self.host.store.root) or operation not in BIND + UNBIND \
                or not isinstance(request.get("xml"), str):
            return None
        try:
            done = run(self.host, operation, request["xml"])
        except NwfilterError as exc:
            LOG.error("libvirt hook: %s %s: %s", request.get("domain"), operation, exc)
            return {"error": str(exc)}
        except Exception:  # pylint: disable=broad-except  # the hook's own process then does it, and reports
            LOG.exception("libvirt hook: %s %s failed here", request.get("domain"), operation)
            return None
        LOG.info("libvirt hook: %s %s: %s", request.get("domain"), operation, " ".join(done) or "nothing")
        return {"done": done, "service": True}


def _request(conn: socket.socket) -> dict:
    request = json.loads(read_all(conn, MAX_REQUEST))
    if not isinstance(request, dict):
        raise ValueError("not a request")
    return request
