"""The service loop: one process, one selector, one AF_PACKET socket per
port that is learning, with a kernel-side filter so only ARP and IPv4 frames
(what learning needs) ever reach user space."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import queue
import selectors
import socket
import struct
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from engine.errors import NwfilterError
from engine.host import Host
from engine.model import Binding

from .inotify import store_events
from .leases import Leases
from .packets import dhcp, dhcp6, learn_any, learn_any6

LOG = logging.getLogger("vmguard-learner")
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4  # sockaddr_ll's pkttype of a frame the interface sends
SO_ATTACH_FILTER = 26
STOP = object()  # the selector's data for the stop descriptor


def capture_filter(mac: str) -> list:
    """Classic BPF run in the kernel: keep ARP, IPv4 and IPv6 frames sent by
    the VM (source MAC), and DHCP replies to a client (IPv4/UDP to port 68,
    IPv6/UDP to port 546); drop everything else, such as frames of other VMs
    flooded to this port."""
    raw = bytes.fromhex(mac.replace(":", ""))
    high, low = int.from_bytes(raw[:4], "big"), int.from_bytes(raw[4:], "big")
    return [
        (0x28, 0, 0, 12),           # 0: A = ethertype
        (0x15, 2, 0, 0x0806),       # 1: ARP -> 4
        (0x15, 1, 0, 0x0800),       # 2: IPv4 -> 4
        (0x15, 0, 19, 0x86DD),      # 3: IPv6 -> 4, else drop
        (0x20, 0, 0, 6),            # 4: A = source MAC, high 4 bytes
        (0x15, 0, 2, high),         # 5: ours? else -> 8
        (0x28, 0, 0, 10),           # 6: A = source MAC, low 2 bytes
        (0x15, 14, 0, low),         # 7: ours -> accept
        (0x28, 0, 0, 12),           # 8: A = ethertype
        (0x15, 0, 7, 0x0800),       # 9: IPv4, else -> 17
        (0x30, 0, 0, 23),           # 10: A = IP protocol
        (0x15, 0, 11, 17),          # 11: UDP, else drop
        (0x28, 0, 0, 20),           # 12: A = fragment offset
        (0x45, 9, 0, 0x1FFF),       # 13: a fragment -> drop
        (0xB1, 0, 0, 14),           # 14: X = IP header length
        (0x48, 0, 0, 16),           # 15: A = UDP destination port
        (0x15, 5, 6, 68),           # 16: 68 -> accept, else drop
        (0x15, 0, 5, 0x86DD),       # 17: IPv6, else drop
        (0x30, 0, 0, 20),           # 18: A = next header (no extension headers)
        (0x15, 0, 3, 17),           # 19: UDP, else drop
        (0x28, 0, 0, 56),           # 20: A = UDP destination port
        (0x15, 0, 1, 546),          # 21: 546 -> accept, else drop
        (0x06, 0, 0, 0xFFFF),       # 22: accept
        (0x06, 0, 0, 0),            # 23: drop
    ]


FULL_RESCAN = 30.0  # seconds between rescans that do not trust the store's directory times
# A capture sees a frame from the VM before the bridge's rules lock its address:
# when the kernel's lock is still empty, look again this often, this many times
LOCK_RECHECK, LOCK_RECHECKS = 0.002, 10
RATE, BURST = 10.0, 50.0  # snooped frames per second and burst, per port (as libvirt)


@dataclass
class Watch:
    binding: Binding
    mode: str
    sock: socket.socket
    learned: Dict[str, List[str]] = field(default_factory=dict)  # IP and/or IPV6: what is known so far
    tokens: float = BURST
    missed: bool = False  # a frame was dropped by the rate limit since the last full rescan
    stamp: float = field(default_factory=time.monotonic)

    def allow(self) -> bool:
        now = time.monotonic()
        self.tokens = min(BURST, self.tokens + (now - self.stamp) * RATE)
        self.stamp = now
        if self.tokens < 1:
            self.missed = True
            return False
        self.tokens -= 1
        return True


def open_capture(ifname: str, mac: str) -> socket.socket:
    # protocol 0 until bind: a socket made with ETH_P_ALL is hooked to every
    # interface at once, and bind then waits for an RCU grace period (~20 ms) to unhook it
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        # struct sock_fprog {len, pointer to the instructions}; the kernel copies them
        instructions = capture_filter(mac)
        program = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *insn) for insn in instructions))
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER,
                        struct.pack("HL", len(instructions), ctypes.addressof(program)))
        sock.bind((ifname, ETH_P_ALL))
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


class Learner:
    def __init__(self, host: Host, leases: Leases) -> None:
        self.host = host
        self.leases = leases
        self.selector = selectors.DefaultSelector()
        self.watches: Dict[str, Watch] = {}
        self.signature: tuple = ()
        self.layer3_warning: Optional[str] = None
        self.links = None
        self.links_fd = -1
        self._listen_links()
        self.next_full = 0.0  # when the next full rescan is due (kept across calls of run)
        self.rechecks: Dict[str, Tuple[float, int]] = {}  # port: (when, tries left) to read its lock again
        self.store_events = _store_events(host)
        if self.store_events is not None:
            self.selector.register(self.store_events, selectors.EVENT_READ, "")
        # closing an AF_PACKET socket waits for an RCU grace period (about 16 ms here):
        # done off the loop, so that it never delays the next port's learning
        self.closing: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=_close_all, args=(self.closing,), name="close-captures", daemon=True).start()
        weakref.finalize(self, self.closing.put, None)

    def _drain_links(self) -> None:
        """Read the link events (only their arrival matters). When the kernel
        dropped some (ENOBUFS: many interfaces at once, as when VMs start
        together), a new socket replaces the old one; the forced rescan that
        follows finds whatever they said."""
        try:
            self.links.get()
        except OSError as exc:
            LOG.debug("link events: %s; listening again", exc)
            # by its number: pyroute2's socket raises the same error for anything asked of it now
            self.selector.unregister(self.links_fd)
            with contextlib.suppress(OSError):
                self.links.close()
            self._listen_links()

    def _listen_links(self) -> None:
        self.links = _link_events()
        if self.links is not None:
            self.links_fd = self.links.fileno()
            self.selector.register(self.links_fd, selectors.EVENT_READ, None)

    def _store_signature(self) -> tuple:
        # every store change replaces or removes a file, which touches its directory
        return tuple(os.stat(d).st_mtime_ns if os.path.isdir(d) else 0 for d in self.host.store.dirs.values())

    def _check_bridge_netfilter(self) -> None:
        """Log (once per change of it) when layer-3/4 rules cannot see bridged traffic."""
        warning = self.host.layer3_warning()
        if warning and warning != self.layer3_warning:
            LOG.warning("%s", warning)
        self.layer3_warning = warning

    def rescan(self, force: bool = False) -> None:
        """Watch exactly the ports that learn now and whose interface exists.
        Without ``force`` nothing is done unless the store changed."""
        signature = self._store_signature()
        if not force and signature == self.signature:
            return
        try:
            learnable = self.host.learnable()
        except (NwfilterError, OSError) as exc:
            LOG.error("cannot read the store: %s; watching what was watched", exc)
            return
        self.signature = signature
        wanted = {}
        for portdev, (binding, mode, learned) in learnable.items():
            if mode == "any" and any(learned.values()) and not _exists(binding.linkdev or portdev):
                # the interface went away: its address is learned afresh when it comes back
                # (dhcp keeps its unexpired leases)
                LOG.info("%s: interface gone, its address will be learned again", portdev)
                self._apply(portdev, {})
                learned = {name: [] for name in learned}
            if mode == "dhcp" or not all(learned.values()):
                wanted[portdev] = (binding, mode, learned)
        for portdev in list(self.watches):
            if portdev not in wanted or self.watches[portdev].binding != wanted[portdev][0]:
                self._stop(portdev)
        for portdev, (binding, mode, learned) in wanted.items():
            if portdev in self.watches:
                self.watches[portdev].learned = learned
                if force and mode == "any" and self.watches[portdev].missed:
                    # the safety net: frames were dropped by the rate limit, the one that locked among them?
                    self.watches[portdev].missed = False
                    self._promote(portdev, tries=0)
            else:
                try:
                    # a macvtap binding is captured on its lower device (frames filtered by the VM's MAC)
                    sock = open_capture(binding.linkdev or portdev, binding.mac)
                except OSError:
                    continue  # no such interface yet: try again at the next rescan
                self.watches[portdev] = Watch(binding, mode, sock, learned)
                self.selector.register(sock, selectors.EVENT_READ, portdev)
                LOG.info("learning the address of %s (%s)", portdev, mode)
                if mode == "any":
                    # the VM may have spoken before the capture was open (a frame may be crossing the bridge now)
                    self._promote(portdev, tries=2)

    def _stop(self, portdev: str) -> None:
        watch = self.watches.pop(portdev)
        self.rechecks.pop(portdev, None)
        self.selector.unregister(watch.sock)
        self.closing.put(watch.sock)

    def on_frame(self, portdev: str, frame: bytes, to_vm: bool) -> None:
        """One captured frame (``to_vm``: sent to the VM from the network side).
        Hostile input: anything unexpected is logged and the frame dropped."""
        try:
            self._on_frame(portdev, frame, to_vm)
        except Exception as exc:  # pylint: disable=broad-except  # one frame must never stop the service
            LOG.warning("%s: frame of %d bytes dropped: %s: %s", portdev, len(frame), type(exc).__name__, exc)

    def _on_frame(self, portdev: str, frame: bytes, to_vm: bool) -> None:
        LOG.debug("%s: frame of %d bytes", portdev, len(frame))
        watch = self.watches[portdev]
        if not watch.allow():
            return
        if watch.mode == "dhcp":
            self._snoop(watch, portdev, frame, to_vm)
            return
        # mode any: the kernel has locked the address; a frame that may have done it says when to read the lock
        found = {"IP": learn_any(frame, watch.binding.mac, to_vm),
                 "IPV6": None if to_vm else learn_any6(frame, watch.binding.mac)}
        news = {name: [found[name]] for name in watch.learned if found.get(name) and not watch.learned[name]}
        if news:
            # a macvtap port's frames never cross our bridge table: no kernel lock, the frame decides
            self._promote(portdev, news=news if watch.binding.linkdev else None)

    def _promote(self, portdev: str, tries: int = LOCK_RECHECKS,
                 news: Optional[Dict[str, List[str]]] = None) -> None:
        """Mode any: apply the full rules with the addresses the kernel locked
        (authoritative, whatever frames this process saw or missed)."""
        watch = self.watches[portdev]
        if news is None:
            if watch.binding.linkdev:
                return  # nothing in the kernel to read
            missing = [name for name in watch.learned if not watch.learned[name]]
            try:
                locked = self.host.locks(watch.binding, missing)
            except NwfilterError as exc:
                LOG.error("%s: cannot read the kernel's lock: %s", portdev, exc)
                return
            news = {name: values for name, values in locked.items() if values}
        if not news:
            if tries > 0:
                self.rechecks[portdev] = (time.monotonic() + LOCK_RECHECK, tries - 1)
            return
        self.rechecks.pop(portdev, None)
        watch.learned.update(news)
        self._apply(portdev, watch.learned)
        if portdev in self.watches and all(watch.learned.values()):
            self._stop(portdev)

    def _snoop(self, watch: Watch, portdev: str, frame: bytes, to_vm: bool) -> None:
        """Mode dhcp: an ACK (DHCPv6: a Reply) from a trusted server to the VM
        adds leases; the VM's own RELEASE or DECLINE removes one."""
        now = time.time()
        if not self._lease_dhcp(watch, portdev, frame, now, to_vm) and \
                not self._lease_dhcp6(watch, portdev, frame, now, to_vm):
            return
        self._apply(portdev, self._leased(watch, portdev, now))

    def _lease_dhcp(self, watch: Watch, portdev: str, frame: bytes, now: float, to_vm: bool) -> bool:
        message = dhcp(frame)
        if message is None or "IP" not in watch.learned or message.client_mac != watch.binding.mac:
            return False
        trusted = watch.binding.parameters.get("DHCPSERVER")
        if message.kind == "ack" and to_vm and (not trusted or message.server in trusted):
            self.leases.add(portdev, message.your_ip, now + (message.lease or 3600), message.server or "")
        elif message.kind in ("release", "decline") and not to_vm:
            self.leases.remove(portdev, message.client_ip if message.kind == "release" else message.your_ip)
        else:
            return False
        return True

    def _lease_dhcp6(self, watch: Watch, portdev: str, frame: bytes, now: float, to_vm: bool) -> bool:
        message = dhcp6(frame)
        if message is None or "IPV6" not in watch.learned:
            return False
        mac = watch.binding.mac
        trusted = watch.binding.parameters.get("DHCPSERVERV6")
        if message.kind == "reply" and to_vm and message.dest_mac == mac and (not trusted or message.server in trusted):
            for address, valid in message.addresses:
                if valid:
                    self.leases.add(portdev, address, now + valid, message.server, var="IPV6")
                else:  # a lifetime of 0: the server withdrew it
                    self.leases.remove(portdev, address)
        elif message.kind in ("release", "decline") and not to_vm and message.source_mac == mac:
            for address, _valid in message.addresses:
                self.leases.remove(portdev, address)
        else:
            return False
        return bool(message.addresses)

    def _leased(self, watch: Optional[Watch], portdev: str, now: float) -> Dict[str, List[str]]:
        """What the port's unexpired leases give, for the variables it learns."""
        leased = self.leases.addresses(portdev, now)
        names = watch.learned if watch is not None else leased
        return {name: leased.get(name, []) for name in names}

    def _apply(self, portdev: str, learned: Dict[str, List[str]]) -> None:
        addresses = [a for values in learned.values() for a in values]
        try:
            self.host.learned(portdev, learned.get("IP", []), learned.get("IPV6", []))
            # our own write needs no rescan (it would delay the next port's learning);
            # anything else is caught by the periodic full rescan
            self.signature = self._store_signature()
            LOG.info("%s: %s", portdev, ", ".join(addresses) or "no address left, back to learning rules")
        except NwfilterError as exc:
            LOG.error("%s: cannot apply the learned rules (%s); setting the interface down", portdev, exc)
            set_down(portdev)

    def run(self, rescan_every: float = 1.0, until: Optional[float] = None, stop: Optional[int] = None) -> None:
        """Serve captures and events until ``until`` or until ``stop`` (a file
        descriptor) is readable. The store is looked at as soon as it tells
        us it changed (inotify), otherwise every ``rescan_every`` seconds (which
        also expires leases), and in full every FULL_RESCAN seconds as a safety net."""
        if stop is not None:
            self.selector.register(stop, selectors.EVENT_READ, STOP)
        try:
            self._serve(rescan_every, until)
        finally:
            if stop is not None:
                self.selector.unregister(stop)

    def _serve(self, rescan_every: float, until: Optional[float]) -> None:
        next_scan, force = 0.0, False
        while until is None or time.monotonic() < until:
            if time.monotonic() >= next_scan:
                if time.monotonic() >= self.next_full:
                    force, self.next_full = True, time.monotonic() + FULL_RESCAN
                    self._check_bridge_netfilter()
                self.rescan(force)
                force = False
                for portdev in self.leases.expire(time.time()):
                    self._apply(portdev, self._leased(self.watches.get(portdev), portdev, time.time()))
                next_scan = time.monotonic() + rescan_every
            wake = min([next_scan] + [when for when, _tries in self.rechecks.values()])
            if until is not None:
                wake = min(wake, until)
            for key, _events in self.selector.select(timeout=max(0.0, wake - time.monotonic())):
                portdev = key.data
                if portdev is STOP:
                    return
                if portdev is None:  # an interface came or went: look again now
                    self._drain_links()
                    next_scan, force = 0.0, True
                    continue
                if portdev == "":  # the store changed
                    self.store_events.drain()
                    self.rescan()
                    continue
                if portdev not in self.watches:
                    continue  # stopped by an earlier event of this round
                try:
                    frame, address = key.fileobj.recvfrom(2048)
                except BlockingIOError:
                    continue
                except OSError:
                    self._stop(portdev)  # the interface went away; rescan picks it up again
                    continue
                self.on_frame(portdev, frame, to_vm(address[2], self.watches[portdev].binding))
            now = time.monotonic()
            for portdev, (when, tries) in list(self.rechecks.items()):
                if when <= now:
                    del self.rechecks[portdev]
                    if portdev in self.watches:
                        self._promote(portdev, tries)


def to_vm(pkttype: int, binding: Binding) -> bool:
    """Whether a captured frame goes to the VM (from the network side): the
    port sends it out. A macvtap binding is captured on its lower device,
    where frames to the VM are the ones that arrive."""
    return (pkttype == PACKET_OUTGOING) != bool(binding.linkdev)


def _close_all(closing: queue.SimpleQueue) -> None:
    """Close each socket put in ``closing`` until None comes (its Learner is gone)."""
    for sock in iter(closing.get, None):
        sock.close()


def _exists(ifname: str) -> bool:
    try:
        socket.if_nametoindex(ifname)
        return True
    except OSError:
        return False


def _store_events(host: Host):
    try:
        for directory in host.store.dirs.values():
            os.makedirs(directory, mode=0o755, exist_ok=True)
    except OSError:
        return None
    return store_events(list(host.store.dirs.values()) + [host.store.root])


def _link_events():
    """A netlink socket that reports interfaces appearing and disappearing."""
    try:
        from pyroute2 import IPRoute  # pylint: disable=import-outside-toplevel
        from pyroute2.netlink.rtnl import RTMGRP_LINK  # pylint: disable=import-outside-toplevel
        links = IPRoute()
        links.bind(groups=RTMGRP_LINK)  # link events only: neighbour and route chatter would keep us awake
        return links
    except (ImportError, OSError):
        return None  # the periodic rescan still finds new interfaces


def set_down(portdev: str) -> None:
    from pyroute2 import IPRoute  # pylint: disable=import-outside-toplevel
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=portdev)
        if found:
            ipr.link("set", index=found[0], state="down")
