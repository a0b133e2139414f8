# -*- coding: utf-8 -*-
# Copyright: vmguard developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""nftables' netlink interface, straight from a socket, for the few reads
where nft is too slow: the ruleset generation, and the tables, chains and
rule counts of a table (nft decodes and prints every rule to list a table,
seconds for a thousand ports; counting the kernel's rule messages takes a
fraction of that)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import struct
import threading
from typing import Dict, FrozenSet, Iterable, Iterator, List, Optional, Sequence, Tuple

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END, NFNL_BATCH_GENID = 0x10, 0x11, 1
NLMSG_ERROR, NLMSG_DONE = 2, 3
CLONE_NEWNET = 0x40000000
SO_NETNS_COOKIE = 71
SO_SNDBUFFORCE = 32  # Python names SO_SNDBUF but not its root-only twin
FAMILIES = {"inet": 1, "bridge": 7}
_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port id
_ATTRIBUTE = struct.Struct("=HH")
NLA_F_NESTED, NFTA_LIST_ELEM = 0x8000, 1  # a nested attribute's flag; an element of a nested list

Attributes = Dict[int, bytes]


def namespace_path(netns: Optional[str]) -> str:
    return f"/run/netns/{netns}" if netns else "/proc/self/ns/net"


def _socket_in(netns: Optional[str]) -> socket.socket:
    """A netlink socket of namespace ``netns`` (a socket keeps the namespace it was made in)."""
    if netns is None:
        return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    made: list = []

    def make() -> None:
        # setns moves only this short-lived thread
        try:
            with open(namespace_path(netns), "rb") as handle:
                if ctypes.CDLL(None, use_errno=True).setns(handle.fileno(), CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"cannot enter network namespace {netns}")
            made.append(socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER))
        except OSError as exc:
            made.append(exc)

    thread = threading.Thread(target=make)
    thread.start()
    thread.join()
    if isinstance(made[0], OSError):
        raise made[0]
    return made[0]


def attribute(kind: int, value: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    return struct.pack("=HH", 4 + len(value), kind) + value + b"\0" * (-len(value) % 4)


def cstring(value: str) -> bytes:
    """A name as a netlink string attribute holds it."""
    return value.encode() + b"\0"


def text(value: bytes) -> str:
    return value.split(b"\0", 1)[0].decode()


def each_attribute(data: bytes) -> Iterator[Tuple[int, bytes]]:
    """(kind, value) of each attribute of a list, in order, repeated kinds
    included (a nested list's elements); ``_attributes`` keeps only wanted ones."""
    offset = 0
    while offset + 4 <= len(data):
        length, kind = _ATTRIBUTE.unpack_from(data, offset)
        if length < 4:
            return
        yield kind & 0x3FFF, data[offset + 4:offset + length]
        offset += (length + 3) & ~3


def _attributes(data: bytes, offset: int, end: int, wanted: FrozenSet[int]) -> Attributes:
    found: Attributes = {}
    unpack = _ATTRIBUTE.unpack_from
    while offset + 4 <= end:
        length, kind = unpack(data, offset)
        if length < 4:
            break
        if kind & 0x3FFF in wanted:
            found[kind & 0x3FFF] = data[offset + 4:offset + length]
        offset += (length + 3) & ~3
    return found


def _messages(data: bytes) -> Iterator[Tuple[int, int, int, int]]:
    """(offset, length, type, sequence) of each netlink message in ``data``."""
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind, _flags, seq, _pid = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size:
            return
        yield offset, length, kind, seq
        offset += (length + 3) & ~3


def _error(data: bytes, offset: int) -> int:
    """The errno of the NLMSG_ERROR message at ``offset`` (0: an acknowledgement)."""
    return -struct.unpack_from("=i", data, offset + _HEADER.size)[0]


def _fit_send_buffer(sock: socket.socket, size: int) -> None:
    """A netlink message must fit the socket's send buffer (else EMSGSIZE):
    removing 700 clean-traffic ports is 0.32 MB. Root may pass the system's
    limit (SO_SNDBUFFORCE), as nft does; else the limit holds."""
    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) >= size + 4096:
        return
    for option in (SO_SNDBUFFORCE, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, size + 4096)
            return
        except OSError:
            continue


class Netlink:
    """One NETLINK_NETFILTER socket of a network namespace (None: ours)."""

    def __init__(self, netns: Optional[str] = None) -> None:
        self.netns = netns
        self._sock: Optional[socket.socket] = None
        self._seq = 0
        self._lock = threading.Lock()

    def _socket(self) -> socket.socket:
        if self._sock is None:
            self._sock = _socket_in(self.netns)
            self._sock.settimeout(5)
        return self._sock

    def namespace(self) -> int:
        """The namespace's cookie (never reused while the machine runs), or,
        before Linux 5.14, its inode (which a later namespace may reuse)."""
        with self._lock:
            try:
                return struct.unpack("=Q", self._socket().getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8))[0]
            except OSError:
                return os.stat(namespace_path(self.netns)).st_ino

    def request(self, message: int, wanted: Iterable[int], family: str = "", attributes: bytes = b"",
                dump: bool = False) -> List[Attributes]:
        """Send one nftables request (``message``: NFT_MSG_GET*); the
        ``wanted`` top-level attributes of every reply (of all of them, for a dump)."""
        keep = frozenset(wanted)
        with self._lock, self._closed_on_error():
            self._seq = self._next_seq(1)
            sock = self._socket()
            sock.send(self._message(NFNL_SUBSYS_NFTABLES << 8 | message, NLM_F_REQUEST | (NLM_F_DUMP if dump else 0),
                                    self._seq, FAMILIES.get(family, socket.AF_UNSPEC), 0, attributes))
            replies: List[Attributes] = []
            while True:
                data = sock.recv(1 << 20)
                for offset, length, kind, seq in _messages(data):
                    if seq == self._seq:
                        if kind == NLMSG_DONE:
                            return replies
                        if kind == NLMSG_ERROR:
                            error = _error(data, offset)
                            if error:
                                raise OSError(error, f"nftables netlink: {os.strerror(error)}")
                            return replies
                        replies.append(_attributes(data, offset + _HEADER.size + 4, offset + length, keep))
                        if not dump:
                            return replies

    def batch(self, messages: Sequence[Tuple[int, str, bytes]], generation: Optional[int] = None) -> None:
        """Send ``messages`` (NFT_MSG_* type, family, attributes) as one
        transaction: all of it is committed or none. With ``generation``, the
        kernel refuses it if any other transaction came after that one."""
        with self._lock, self._closed_on_error():
            first = self._next_seq(len(messages) + 2)
            last = first + len(messages) + 1
            begin = attribute(NFNL_BATCH_GENID, struct.pack(">I", generation)) if generation is not None else b""
            parts = [self._message(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, first, socket.AF_UNSPEC,
                                   NFNL_SUBSYS_NFTABLES, begin)]
            # Only the last message asks for an acknowledgement: the kernel queues
            # them all before we read one, and a few hundred (a removal of 19
            # ports) overflowed the socket's buffer, the rest lost. Errors come
            # whatever the flags, in order, before that last acknowledgement.
            for number, (message, family, attributes) in enumerate(messages, first + 1):
                flags = NLM_F_REQUEST | (NLM_F_ACK if number == last - 1 else 0)
                parts.append(self._message(NFNL_SUBSYS_NFTABLES << 8 | message, flags, number, FAMILIES[family], 0,
                                           attributes))
            parts.append(self._message(NFNL_MSG_BATCH_END, NLM_F_REQUEST, last, socket.AF_UNSPEC,
                                       NFNL_SUBSYS_NFTABLES, b""))
            self._seq = last
            batch = b"".join(parts)
            sock = self._socket()
            _fit_send_buffer(sock, len(batch))
            sock.send(batch)
            error, done = 0, not messages
            while not done:
                data = sock.recv(1 << 16)
                for offset, _length, kind, seq in _messages(data):
                    if kind == NLMSG_ERROR and first <= seq < last:  # first: a stale generation
                        error = error or _error(data, offset)
                        done = done or seq == last - 1
                if error:  # the kernel aborted the batch at its first error
                    raise OSError(error, f"nftables netlink: {os.strerror(error)}")

    @contextlib.contextmanager
    def _closed_on_error(self) -> Iterator[None]:
        """A request or batch that fails closes the socket: a reply still on its
        way must not meet the next request, and the unread rest of a dump would
        make the next dump fail (EBUSY)."""
        try:
            yield
        except BaseException:
            self.close()
            raise

    def _next_seq(self, count: int) -> int:
        """The first of ``count`` new sequence numbers: 32 bits in a message,
        so a long-running service starts again from 1 before they overflow."""
        return self._seq + 1 if self._seq + count <= 0xFFFFFFFF else 1

    @staticmethod
    def _message(kind: int, flags: int, seq: int, family: int, resource: int, attributes: bytes) -> bytes:
        body = struct.pack("=BBH", family, 0, socket.htons(resource)) + attributes
        return _HEADER.pack(_HEADER.size + len(body), kind, flags, seq, 0) + body

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
