# -*- coding: utf-8 -*-
# Copyright: vmguard developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""nftables' change notifications: the kernel multicasts every committed
change to a table, chain, rule, set or set element on the netlink group
NFNLGRP_NFTABLES, then one NEWGEN message that closes the transaction and
names the process that committed it. Stdlib ``socket`` only."""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from typing import Dict, Iterator, List

from .nft_netlink import NETLINK_NETFILTER, NFNL_SUBSYS_NFTABLES

NFNLGRP_NFTABLES = 7
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
SO_RCVBUFFORCE = 33
RECEIVE_BUFFER = 8 << 20  # a flush of 1000 ports is tens of thousands of messages

FAMILIES = {1: "inet", 2: "ip", 3: "arp", 5: "netdev", 7: "bridge", 10: "ip6"}
# message type (low byte) -> (what, deleted); NEW* and DEL* only, the rest is ignored
KINDS = {0: ("table", False), 2: ("table", True), 3: ("chain", False), 5: ("chain", True),
         6: ("rule", False), 8: ("rule", True), 9: ("set", False), 11: ("set", True),
         12: ("element", False), 14: ("element", True)}
NFT_MSG_NEWGEN = 15
# per kind, the attribute holding the name of the object (or of the chain or set it belongs to);
# the table's name is attribute 1 in every kind
NAME_ATTRIBUTE = {"table": 0, "chain": 3, "rule": 2, "set": 2, "element": 2}
NFTA_GEN_PROC_PID, NFTA_GEN_PROC_NAME = 2, 3


@dataclass(frozen=True)
class Change:
    """One object changed: ``what`` (table, chain, rule, set or element) in
    ``family`` ``table``; ``name`` is the chain's or set's (for a rule: its
    chain, for an element: its set; empty for a table)."""

    what: str
    deleted: bool
    family: str
    table: str
    name: str


@dataclass(frozen=True)
class Commit:
    """The end of one transaction, with the process that committed it."""

    pid: int
    process: str


def subscribe() -> socket.socket:
    """A netlink socket of the current network namespace receiving every nftables change."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    try:
        sock.bind((0, 0))
        sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES)
        try:  # beyond the rmem_max limit (needs CAP_NET_ADMIN, which the service has)
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
    except OSError:
        sock.close()
        raise
    return sock


def _attributes(data: bytes) -> Dict[int, bytes]:
    found = {}
    offset = 0
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            break
        found[kind & 0x3FFF] = data[offset + 4:offset + length]  # without the nested/byte-order flags
        offset += (length + 3) & ~3
    return found


def _string(value: bytes) -> str:
    return value.split(b"\0", 1)[0].decode("utf-8", "replace")


def parse(data: bytes) -> Iterator[object]:
    """The ``Change`` and ``Commit`` messages in one datagram, in order; other messages are skipped."""
    offset = 0
    while offset + 20 <= len(data):
        length, kind = struct.unpack_from("=IH", data, offset)
        if length < 20:
            return  # malformed: nothing after it can be trusted
        body = data[offset + 20:offset + length]  # after nlmsghdr (16 bytes) and nfgenmsg (4)
        family = data[offset + 16]
        offset += (length + 3) & ~3
        if kind >> 8 != NFNL_SUBSYS_NFTABLES:
            continue
        attributes = _attributes(body)
        message = kind & 0xFF
        if message == NFT_MSG_NEWGEN:
            pid = attributes.get(NFTA_GEN_PROC_PID, b"\0\0\0\0")
            yield Commit(struct.unpack("!I", pid[:4])[0] if len(pid) >= 4 else 0,
                         _string(attributes.get(NFTA_GEN_PROC_NAME, b"")))
        elif message in KINDS:
            what, deleted = KINDS[message]
            name = NAME_ATTRIBUTE[what]
            yield Change(what, deleted, FAMILIES.get(family, str(family)), _string(attributes.get(1, b"")),
                         _string(attributes.get(name, b"")) if name else "")


def summary(changes: List[Change]) -> str:
    """What a transaction did, briefly: ``deleted table bridge vmguard, flushed
    chain bridge vmguard p/vnet0/o (3 rules)``..."""
    parts: List[str] = []
    counted: Dict[tuple, int] = {}
    for change in changes:
        key = (change.what, change.deleted, change.family, change.table, change.name)
        counted[key] = counted.get(key, 0) + 1
    deleted_tables = {(c.family, c.table) for c in changes if c.what == "table" and c.deleted}
    deleted_chains = {(c.family, c.table, c.name) for c in changes if c.what == "chain" and c.deleted}
    deleted_sets = {(c.family, c.table, c.name) for c in changes if c.what == "set" and c.deleted}
    for (what, deleted, family, table, name), count in counted.items():
        # what went with a deleted table, chain or set is implied by it
        if what != "table" and (family, table) in deleted_tables and deleted:
            continue
        if what == "rule" and deleted and (family, table, name) in deleted_chains:
            continue
        if what == "element" and deleted and (family, table, name) in deleted_sets:
            continue
        verb = "deleted" if deleted else "added"
        if what == "rule":
            noun = f"{count} rule{'s' if count > 1 else ''} of chain {family} {table} {name}"
        elif what == "element":
            noun = f"{count} element{'s' if count > 1 else ''} of map {family} {table} {name}"
        else:
            noun = f"{'map' if what == 'set' else what} {family} {table}{' ' + name if name else ''}"
        parts.append(f"{verb} {noun}")
    shown = parts[:6]
    return ", ".join(shown) + (f" and {len(parts) - 6} more changes" if len(parts) > 6 else "")
