# -*- coding: utf-8 -*-
# Copyright: vmguard developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The kernel's nftables ruleset generation: a counter every committed
nftables transaction of a network namespace increments, whoever sends it.
The same generation as after our own last commit means nobody changed any
table since; reading it is one netlink round trip (NFT_MSG_GETGEN), far
cheaper than listing our tables.

A ``Marker`` (boot id, namespace cookie, generation) names one ruleset state
of one namespace of one boot: generations restart at every boot and differ
per namespace.
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
import threading
from typing import Optional, Tuple

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_GETGEN, NFT_MSG_NEWGEN = 16, 15
NLM_F_REQUEST = 1
NLMSG_ERROR = 2
NFTA_GEN_ID = 1
CLONE_NEWNET = 0x40000000
SO_NETNS_COOKIE = 71
_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port id

Marker = Tuple[str, int, int]


def boot_id() -> str:
    with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
        return handle.read().strip()


def _namespace_path(netns: Optional[str]) -> str:
    return f"/run/netns/{netns}" if netns else "/proc/self/ns/net"


def _socket_in(netns: Optional[str]) -> socket.socket:
    """A netlink socket of namespace ``netns`` (a socket keeps the namespace it was made in)."""
    if netns is None:
        return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    made: list = []

    def make() -> None:
        # setns moves only this short-lived thread
        try:
            with open(_namespace_path(netns), "rb") as handle:
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


class Generation:
    """Reads the ruleset generation of one network namespace (None: ours)."""

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
                return os.stat(_namespace_path(self.netns)).st_ino

    def current(self) -> int:
        """The generation now (one netlink request and its reply)."""
        with self._lock:
            sock = self._socket()
            self._seq += 1
            request = _HEADER.pack(_HEADER.size + 4, NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETGEN, NLM_F_REQUEST,
                                   self._seq, 0) + struct.pack("=BBH", socket.AF_UNSPEC, 0, 0)
            sock.send(request)
            while True:
                reply = sock.recv(65536)
                generation = _parse(reply, self._seq)
                if generation is not None:
                    return generation

    def marker(self) -> Marker:
        return (boot_id(), self.namespace(), self.current())

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _parse(reply: bytes, seq: int) -> Optional[int]:
    offset = 0
    while offset + _HEADER.size <= len(reply):
        length, kind, _flags, got_seq, _pid = _HEADER.unpack_from(reply, offset)
        if length < _HEADER.size:
            break
        if got_seq == seq:
            if kind == NLMSG_ERROR:
                error = -struct.unpack_from("=i", reply, offset + _HEADER.size)[0]
                raise OSError(error, f"nftables generation: {os.strerror(error)}")
            if kind & 0xFF == NFT_MSG_NEWGEN:
                attr = offset + _HEADER.size + 4  # after nfgenmsg
                while attr + 4 <= offset + length:
                    attr_length, attr_type = struct.unpack_from("=HH", reply, attr)
                    if attr_length < 4:
                        break
                    if attr_type & 0x3FFF == NFTA_GEN_ID:
                        return struct.unpack_from(">I", reply, attr + 4)[0]
                    attr += (attr_length + 3) & ~3
        offset += (length + 3) & ~3
    return None
