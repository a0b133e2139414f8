"""The learner service in the lab: a VM's address learned from its own
traffic, then the full rules enforced (real frames, real nftables)."""

import ipaddress
import shutil
import subprocess
import threading
import time
from contextlib import contextmanager

import pytest
from scapy.all import ARP, BOOTP, DHCP, IP, UDP, Ether  # pylint: disable=no-name-in-module

from engine.model import Binding, FilterRef
from lab.netns import inside
from lab.probes import Probe, run_probes, standard_probes, tagged
from learner.leases import Leases
from learner.service import Learner


def _serve(lab, host, leases_path, done, state):
    with inside(lab.host):  # this thread lives in the lab's host namespace, netlink socket included
        service = state["service"] = Learner(host, Leases(leases_path))
        stop = time.monotonic() + 30
        while not done.is_set() and time.monotonic() < stop:
            service.run(rescan_every=0.1, until=time.monotonic() + 0.3)


class _Service:
    """The service running in a thread for the test; calling it restarts it."""

    def __init__(self, lab, host, leases):
        self.args, self.state = (lab, host, leases), {}
        self._start()

    def _start(self):
        self.state.clear()
        self.done = threading.Event()
        self.thread = threading.Thread(target=_serve, args=self.args + (self.done, self.state))
        self.thread.start()

    def stop(self):
        self.done.set()
        self.thread.join()

    def __call__(self):
        self.stop()
        self._start()

    def watching(self, portdev, timeout=5.0):
        """Wait until the service captures on this port (instead of guessing a delay)."""
        _wait(lambda: portdev in getattr(self.state.get("service"), "watches", {}), timeout)


@pytest.fixture
def learner(lab, host, tmp_path):
    service = _Service(lab, host, str(tmp_path / "leases.json"))
    yield service
    service.stop()


def _send(lab, guest, frame):
    run_probes(lab, [Probe("send", guest, "peer" if guest == "vm" else "vm", tagged(frame))], wait=0.05)


def _wait_learned(host, portdev, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = host.status(portdev)
        if not status["learning"]:
            return status
        time.sleep(0.05)
    raise AssertionError(f"{portdev} did not learn its address")


@pytest.mark.parametrize("how", ["ipv4", "arp"])
def test_any_mode_learns_then_enforces(lab, host, learner, how):
    vm, peer = lab.guests["vm"], lab.guests["peer"]
    assert host.bind(Binding(vm.port, vm.mac, FilterRef("clean-traffic"))).learning == [vm.port]
    learner.watching(vm.port)
    first = Ether(src=vm.mac, dst=peer.mac) / IP(src=vm.ip, dst=peer.ip) / UDP(dport=9) if how == "ipv4" else \
        Ether(src=vm.mac, dst="ff:ff:ff:ff:ff:ff") / ARP(hwsrc=vm.mac, psrc=vm.ip, pdst=peer.ip)
    _send(lab, "vm", first)
    assert _wait_learned(host, vm.port)["learned"] == {"IP": [vm.ip]}
    verdicts = run_probes(lab, standard_probes(vm, peer))
    assert verdicts["ipv4 udp"] and not verdicts["spoofed ipv4"] and not verdicts["arp spoofed ip"]


def test_lost_link_events_do_not_stop_the_service(lab, host, learner):
    """Many interfaces at once overflow the link-event socket (ENOBUFS): the
    service listens again and rescans, and still learns."""
    vm, peer = lab.guests["vm"], lab.guests["peer"]
    _wait(lambda: getattr(learner.state.get("service"), "links", None) is not None)
    service = learner.state["service"]

    class Overflowed:
        """pyroute2's socket once it met the error: everything asked of it raises it again."""
        def __getattr__(self, _name):
            raise OSError(105, "No buffer space available")
    overflowing = service.links = Overflowed()  # the selector still has the real socket's number
    lab.sh(lab.host, "ip link add vmgx0 type veth peer name vmgx1", "ip link del vmgx0")  # link events to read
    _wait(lambda: service.links is not overflowing)
    assert host.bind(Binding(vm.port, vm.mac, FilterRef("clean-traffic"))).learning == [vm.port]
    learner.watching(vm.port)
    _send(lab, "vm", Ether(src=vm.mac, dst=peer.mac) / IP(src=vm.ip, dst=peer.ip) / UDP(dport=9))
    assert _wait_learned(host, vm.port)["learned"] == {"IP": [vm.ip]}


def _ack(server_mac, server_ip, vm_mac, address, lease=600, kind="ack"):
    return Ether(src=server_mac, dst=vm_mac) / IP(src=server_ip, dst="255.255.255.255") / UDP(sport=67, dport=68) \
        / BOOTP(op=2, yiaddr=address, chaddr=bytes.fromhex(vm_mac.replace(":", ""))) \
        / DHCP(options=[("message-type", kind), ("server_id", server_ip), ("lease_time", lease), "end"])


def _release(vm_mac, address, server_ip):
    return Ether(src=vm_mac, dst="ff:ff:ff:ff:ff:ff") / IP(src=address, dst=server_ip) / UDP(sport=68, dport=67) \
        / BOOTP(op=1, ciaddr=address, chaddr=bytes.fromhex(vm_mac.replace(":", ""))) \
        / DHCP(options=[("message-type", "release"), ("server_id", server_ip), "end"])


def _wait(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_dhcp_mode_trusts_only_its_server(lab, host, learner):
    vm, peer = lab.guests["vm"], lab.guests["peer"]
    params = {"CTRL_IP_LEARNING": ("dhcp",), "DHCPSERVER": (peer.ip,)}
    host.bind(Binding(vm.port, vm.mac, FilterRef("clean-traffic", params)))
    learner.watching(vm.port)
    _send(lab, "peer", _ack(peer.mac, "192.0.2.66", vm.mac, "192.0.2.77"))  # a rogue server's ACK
    time.sleep(0.3)
    assert host.status(vm.port)["learning"]
    _send(lab, "peer", _ack(peer.mac, peer.ip, vm.mac, vm.ip))
    assert _wait_learned(host, vm.port)["learned"] == {"IP": [vm.ip]}


def test_dhcp_two_leases_release_expiry_and_restart(lab, host, learner):
    vm, peer = lab.guests["vm"], lab.guests["peer"]
    host.bind(Binding(vm.port, vm.mac, FilterRef("clean-traffic", {"CTRL_IP_LEARNING": ("dhcp",)})))
    learner.watching(vm.port)
    _send(lab, "peer", _ack(peer.mac, peer.ip, vm.mac, vm.ip))
    _send(lab, "peer", _ack(peer.mac, peer.ip, vm.mac, "192.0.2.11"))
    _wait(lambda: host.status(vm.port)["learned"].get("IP") == [vm.ip, "192.0.2.11"])
    learner()  # a restart keeps the leases (and the rules stay as they are)
    learner.watching(vm.port)  # a release sent before the new service captures would be lost
    _send(lab, "vm", _release(vm.mac, vm.ip, peer.ip))
    _wait(lambda: host.status(vm.port)["learned"].get("IP") == ["192.0.2.11"])
    # A renewal that shortens the lease only after the release: a short lease given
    # earlier could expire during a slow restart, before the release is seen.
    _send(lab, "peer", _ack(peer.mac, peer.ip, vm.mac, "192.0.2.11", lease=1))
    _wait(lambda: host.status(vm.port)["learning"], timeout=6)  # the short lease expired: back to DHCP only


def test_spoofed_first_packet_caveat(lab, host, learner):
    """Mode any believes the first packet: a VM that spoofs it gets the spoofed address."""
    vm, peer = lab.guests["vm"], lab.guests["peer"]
    host.bind(Binding(vm.port, vm.mac, FilterRef("clean-traffic")))
    learner.watching(vm.port)
    _send(lab, "vm", Ether(src=vm.mac, dst=peer.mac) / IP(src="192.0.2.99", dst=peer.ip) / UDP(dport=9))
    assert _wait_learned(host, vm.port)["learned"] == {"IP": ["192.0.2.99"]}


def test_apply_failure_sets_the_interface_down(lab, host, learner):
    from engine.xml_form import filter_from_xml  # pylint: disable=import-outside-toplevel
    vm, peer = lab.guests["vm"], lab.guests["peer"]
    host.define_filter(filter_from_xml(
        "<filter name='ip-as-mac'><rule action='drop' direction='out'><mac srcmacaddr='$IP'/></rule></filter>"))
    host.bind(Binding(vm.port, vm.mac, FilterRef("ip-as-mac")))
    learner.watching(vm.port)
    _send(lab, "vm", Ether(src=vm.mac, dst=peer.mac) / IP(src=vm.ip, dst=peer.ip) / UDP(dport=9))
    _wait(lambda: "state DOWN" in lab_link(lab, vm.port))


def lab_link(lab, port):
    import subprocess  # pylint: disable=import-outside-toplevel
    return subprocess.run(["ip", "netns", "exec", lab.host, "ip", "link", "show", port],
                          capture_output=True, text=True, check=False).stdout


def test_any_learns_again_after_the_interface_is_recreated(lab, host, learner):
    vm, peer = lab.guests["vm"], lab.guests["peer"]
    host.bind(Binding(vm.port, vm.mac, FilterRef("clean-traffic")))
    learner.watching(vm.port)
    _send(lab, "vm", Ether(src=vm.mac, dst=peer.mac) / IP(src=vm.ip, dst=peer.ip) / UDP(dport=9))
    _wait_learned(host, vm.port)
    lab.unplug("vm")
    _wait(lambda: host.status(vm.port)["learning"])
    lab.plug("vm")
    time.sleep(0.3)
    learner.watching(vm.port)
    _send(lab, "vm", Ether(src=vm.mac, dst=peer.mac) / IP(src=vm.ip, dst=peer.ip) / UDP(dport=9))
    assert _wait_learned(host, vm.port)["learned"] == {"IP": [vm.ip]}


@contextmanager
def _real_dhcp(server, vm, tmp_path, version, dhcp_range):
    """dnsmasq serving ``dhcp_range`` in the server's namespace, and dhclient
    (-4 or -6) run once in the VM's namespace; both stopped on exit."""
    names = ("server.leases", "server.pid", "client.leases", "client.pid")
    files = {name: str(tmp_path / f"{name}{version}") for name in names}
    dnsmasq = subprocess.Popen(["ip", "netns", "exec", server.name, "dnsmasq", "--no-daemon", "--port=0",
                                "--interface=eth0", "--bind-interfaces", f"--dhcp-range={dhcp_range}",
                                f"--dhcp-leasefile={files['server.leases']}", f"--pid-file={files['server.pid']}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        client = subprocess.run(["ip", "netns", "exec", vm.name, "dhclient", "-1", f"-{version}", "-sf", "/bin/true",
                                 "-lf", files["client.leases"], "-pf", files["client.pid"], "eth0"],
                                capture_output=True, text=True, timeout=30, check=False)
        assert client.returncode == 0, client.stderr
        yield
    finally:
        subprocess.run(["ip", "netns", "exec", vm.name, "dhclient", f"-{version}", "-x", "-pf", files["client.pid"]],
                       capture_output=True, check=False)
        dnsmasq.terminate()
        dnsmasq.wait(10)


@pytest.mark.skipif(not (shutil.which("dnsmasq") and shutil.which("dhclient")), reason="dnsmasq or dhclient missing")
def test_real_dhcp_server_and_client(lab, host, learner, tmp_path):
    """dnsmasq in a namespace of its own on the bridge, dhclient in the VM: dhcp mode
    with DHCPSERVER learns the leased address from the real exchange."""
    vm = lab.guests["vm"]
    server = lab.add_vm("dhcp", "52:54:00:00:00:0d", "192.0.2.2")
    host.bind(Binding(vm.port, vm.mac, FilterRef("clean-traffic", {"CTRL_IP_LEARNING": ("dhcp",),
                                                                   "DHCPSERVER": (server.ip,)})))
    with _real_dhcp(server, vm, tmp_path, 4, "192.0.2.100,192.0.2.150,2m"):
        status = _wait_learned(host, vm.port)
        address = status["learned"]["IP"][0]
        assert address.startswith("192.0.2.1") and 100 <= int(address.split(".")[-1]) <= 150


def test_any_mode_learns_ipv6_as_well(lab, host, learner):
    """libvirt never learns IPV6; here a tree that needs IP and IPV6 learns both in mode any."""
    from scapy.all import IPv6  # pylint: disable=import-outside-toplevel,no-name-in-module
    from engine.xml_form import filter_from_xml  # pylint: disable=import-outside-toplevel
    vm, peer = lab.guests["vm"], lab.guests["peer"]
    host.define_filter(filter_from_xml("""<filter name='dual'><filterref filter='no-mac-spoofing'/>
      <filterref filter='no-ip-spoofing'/><filterref filter='no-ipv6-spoofing'/></filter>"""))
    assert host.bind(Binding(vm.port, vm.mac, FilterRef("dual"))).learning == [vm.port]
    learner.watching(vm.port)
    _send(lab, "vm", Ether(src=vm.mac, dst=peer.mac) / IP(src=vm.ip, dst=peer.ip) / UDP(dport=9))
    _wait(lambda: host.status(vm.port)["learned"].get("IP") == [vm.ip])
    assert host.status(vm.port)["learning"]  # IPV6 still missing
    _send(lab, "vm", Ether(src=vm.mac, dst=peer.mac) / IPv6(src=vm.ipv6, dst=peer.ipv6) / UDP(dport=9))
    assert _wait_learned(host, vm.port)["learned"] == {"IP": [vm.ip], "IPV6": [vm.ipv6]}
    verdicts = run_probes(lab, standard_probes(vm, peer))
    assert verdicts["ipv6"] and not verdicts["spoofed ipv6"] and not verdicts["spoofed ipv4"]


def _link_local(mac):
    raw = bytearray(bytes.fromhex(mac.replace(":", "")))
    raw[0] ^= 0x02
    return str(ipaddress.IPv6Address(b"\xfe\x80" + b"\x00" * 6 + bytes(raw[:3]) + b"\xff\xfe" + bytes(raw[3:])))


@pytest.mark.skipif(not (shutil.which("dnsmasq") and shutil.which("dhclient")), reason="dnsmasq or dhclient missing")
def test_dhcp_mode_learns_ipv6_from_real_dhcpv6(lab, host, learner, tmp_path):
    """dnsmasq serves DHCPv6, dhclient -6 asks for an address in the VM: mode dhcp
    with DHCPSERVERV6 learns IPV6 from the Reply; a rogue server is ignored;
    then only the leased address may be the VM's IPv6 source."""
    from scapy.all import IPv6  # pylint: disable=import-outside-toplevel,no-name-in-module
    from engine.xml_form import filter_from_xml  # pylint: disable=import-outside-toplevel
    vm, peer = lab.guests["vm"], lab.guests["peer"]
    server = lab.add_vm("dhcp6", "52:54:00:00:00:0d", "192.0.2.2", "2001:db8::2")
    host.define_filter(filter_from_xml("""<filter name='v6only'><filterref filter='no-mac-spoofing'/>
      <filterref filter='no-ipv6-spoofing'/></filter>"""))
    params = {"CTRL_IP_LEARNING": ("dhcp",), "DHCPSERVERV6": (_link_local(server.mac),)}
    assert host.bind(Binding(vm.port, vm.mac, FilterRef("v6only", params))).learning == [vm.port]
    learner.watching(vm.port)
    _send(lab, "peer", Ether(src=peer.mac, dst=vm.mac) / IPv6(src=_link_local(peer.mac), dst=_link_local(vm.mac))
          / UDP(sport=547, dport=546) / _rogue_reply())
    time.sleep(0.3)
    assert host.status(vm.port)["learning"] and not host.status(vm.port)["learned"]
    with _real_dhcp(server, vm, tmp_path, 6, "2001:db8::100,2001:db8::1ff,64,2m"):
        status = _wait_learned(host, vm.port)
        address = status["learned"]["IPV6"][0]
        assert ipaddress.IPv6Address(address) in ipaddress.IPv6Network("2001:db8::/64")
        assert 0x100 <= int(ipaddress.IPv6Address(address)) & 0xFFFF <= 0x1FF
    probes = [Probe(name, "vm", "peer",
                    tagged(Ether(src=vm.mac, dst=peer.mac) / IPv6(src=source, dst=peer.ipv6) / UDP(dport=9)))
              for name, source in (("leased", address), ("spoofed", "2001:db8::99"))]
    assert run_probes(lab, probes) == {"leased": True, "spoofed": False}


def _rogue_reply():
    from scapy.layers.dhcp6 import DHCP6_Reply, DHCP6OptIA_NA, DHCP6OptIAAddress  # pylint: disable=import-outside-toplevel
    return DHCP6_Reply(trid=1) / DHCP6OptIA_NA(iaid=1, ianaopts=[DHCP6OptIAAddress(addr="2001:db8::66", validlft=600)])


def test_a_service_gone_leaves_no_thread_behind(lab, host, learner):
    """Closing capture sockets has a thread of its own (an AF_PACKET close
    waits for an RCU grace period): it ends with its service."""
    _wait(lambda: "service" in learner.state)
    closers = [t for t in threading.enumerate() if t.name == "close-captures"]
    assert closers
    learner.stop()
    learner.state.clear()  # the last reference to the service
    _wait(lambda: not any(t.is_alive() for t in closers))
