"""The hook's fast path: hand the change to the running learner service,
which has the engine imported and its caches warm, over a Unix socket that
only root can use. No engine import here: with no service listening (or no
answer from it) the hook does the change in its own process, as before."""

from __future__ import annotations

import json
import os
import socket
import zlib
from typing import Optional

SOCKET_DIR = "/run/vmguard"
# a start waits this long for the service before the hook does the change itself (the
# store's lock then waits for the service's change, and a second identical change is a no-op)
ANSWER_TIMEOUT = 30.0
MAX_REPLY = 1 << 20


def normpath(root: object) -> str:
    return os.path.normpath(root) if isinstance(root, str) else ""


def socket_path(root: str) -> str:
    """The socket of the service of the store ``root`` (a path in the store could pass AF_UNIX's 107 bytes)."""
    return os.path.join(SOCKET_DIR, f"hook-{zlib.crc32(normpath(root).encode()):08x}.sock")


def read_all(sock: socket.socket, limit: int) -> bytes:
    """What the other end sends until it shuts its side (at most a little over ``limit`` bytes)."""
    data = b""
    while len(data) <= limit:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def ask_service(root: str, domain: str, operation: str, xml: str) -> Optional[dict]:
    """The service's answer, {"done": [ports]} or {"error": "one line"}, or
    None when no service of this store answered."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(ANSWER_TIMEOUT)
        sock.connect(socket_path(root))
        sock.sendall(json.dumps({"root": root, "domain": domain, "operation": operation, "xml": xml}).encode())
        sock.shutdown(socket.SHUT_WR)
        data = read_all(sock, MAX_REPLY)
    except OSError:
        return None
    finally:
        sock.close()
    try:
        answer = json.loads(data)
    except ValueError:
        return None
    if not isinstance(answer, dict) or not (isinstance(answer.get("error"), str) or isinstance(answer.get("done"), list)):
        return None
    return answer
