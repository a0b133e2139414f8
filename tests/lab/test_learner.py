"""The learner service in the lab: a VM's address learned from its own
traffic, then the full rules enforced (real frames, real nftables)."""

import shutil
import subprocess
import threading
import time

import pytest
from scapy.all import ARP, BOOTP, DHCP, IP, UDP, Ether  # pylint: disable=no-name-in-module

from engine.model import Binding, FilterRef
from lab.netns import inside
from lab.probes import Probe, run_probes, standard_probes, tagged
from learner.leases import Leases
from learner.service import Learner


def _serve(lab, host, leases_path, done):
    with inside(lab.host):  # this thread lives in the lab's host namespace, netlink socket included
        service = Learner(host, Leases(leases_path))
        stop = time.monotonic() + 30
        while not done.is_set() and time.monotonic() < stop:
            service.run(rescan_every=0.1, until=time.monotonic() + 0.3)


@pytest.fixture
def learner(lab, host, tmp_path):
    """The service running (in a thread) for the test; ``learner()`` restarts it."""
    state = {"done": threading.Event()}
    state["thread"] = threading.Thread(target=_serve, args=(lab, host, str(tmp_path / "leases.json"), state["done"]))
    state["thread"].start()

    def restart():
        state["done"].set()
        state["thread"].join()
        state["done"] = threading.Event()
        leases = str(tmp_path / "leases.json")
        state["thread"] = threading.Thread(target=_serve, args=(lab, host, leases, state["done"]))
        state["thread"].start()
    yield restart
    state["done"].set()
    state["thread"].join()


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
    time.sleep(0.3)  # the learner picks the binding up at its next rescan
    first = Ether(src=vm.mac, dst=peer.mac) / IP(src=vm.ip, dst=peer.ip) / UDP(dport=9) if how == "ipv4" else \
        Ether(src=vm.mac, dst="ff:ff:ff:ff:ff:ff") / ARP(hwsrc=vm.mac, psrc=vm.ip, pdst=peer.ip)
    _send(lab, "vm", first)
    assert _wait_learned(host, vm.port)["learned"] == {"IP": [vm.ip]}
    verdicts = run_probes(lab, standard_probes(vm, peer))
    assert verdicts["ipv4 udp"] and not verdicts["spoofed ipv4"] and not verdicts["arp spoofed ip"]


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
    time.sleep(0.3)
    _send(lab, "peer", _ack(peer.mac, "192.0.2.66", vm.mac, "192.0.2.77"))  # a rogue server's ACK
    time.sleep(0.3)
    assert host.status(vm.port)["learning"]
    _send(lab, "peer", _ack(peer.mac, peer.ip, vm.mac, vm.ip))
    assert _wait_learned(host, vm.port)["learned"] == {"IP": [vm.ip]}


def test_dhcp_two_leases_release_expiry_and_restart(lab, host, learner):
    vm, peer = lab.guests["vm"], lab.guests["peer"]
    host.bind(Binding(vm.port, vm.mac, FilterRef("clean-traffic", {"CTRL_IP_LEARNING": ("dhcp",)})))
    time.sleep(0.3)
    _send(lab, "peer", _ack(peer.mac, peer.ip, vm.mac, vm.ip))
    _send(lab, "peer", _ack(peer.mac, peer.ip, vm.mac, "192.0.2.11", lease=2))
    _wait(lambda: host.status(vm.port)["learned"].get("IP") == [vm.ip, "192.0.2.11"])
    learner()  # a restart keeps the leases (and the rules stay as they are)
    _send(lab, "vm", _release(vm.mac, vm.ip, peer.ip))
    _wait(lambda: host.status(vm.port)["learned"].get("IP") == ["192.0.2.11"])
    _wait(lambda: host.status(vm.port)["learning"], timeout=6)  # the short lease expired: back to DHCP only


def test_spoofed_first_packet_caveat(lab, host, learner):
    """Mode any believes the first packet: a VM that spoofs it gets the spoofed address."""
    vm, peer = lab.guests["vm"], lab.guests["peer"]
    host.bind(Binding(vm.port, vm.mac, FilterRef("clean-traffic")))
    time.sleep(0.3)
    _send(lab, "vm", Ether(src=vm.mac, dst=peer.mac) / IP(src="192.0.2.99", dst=peer.ip) / UDP(dport=9))
    assert _wait_learned(host, vm.port)["learned"] == {"IP": ["192.0.2.99"]}


def test_apply_failure_sets_the_interface_down(lab, host, learner):
    from engine.xml_form import filter_from_xml  # pylint: disable=import-outside-toplevel
    vm, peer = lab.guests["vm"], lab.guests["peer"]
    host.define_filter(filter_from_xml(
        "<filter name='ip-as-mac'><rule action='drop' direction='out'><mac srcmacaddr='$IP'/></rule></filter>"))
    host.bind(Binding(vm.port, vm.mac, FilterRef("ip-as-mac")))
    time.sleep(0.3)
    _send(lab, "vm", Ether(src=vm.mac, dst=peer.mac) / IP(src=vm.ip, dst=peer.ip) / UDP(dport=9))
    _wait(lambda: "state DOWN" in lab_link(lab, vm.port))


def lab_link(lab, port):
    import subprocess  # pylint: disable=import-outside-toplevel
    return subprocess.run(["ip", "netns", "exec", lab.host, "ip", "link", "show", port],
                          capture_output=True, text=True, check=False).stdout


def test_any_learns_again_after_the_interface_is_recreated(lab, host, learner):
    vm, peer = lab.guests["vm"], lab.guests["peer"]
    host.bind(Binding(vm.port, vm.mac, FilterRef("clean-traffic")))
    time.sleep(0.3)
    _send(lab, "vm", Ether(src=vm.mac, dst=peer.mac) / IP(src=vm.ip, dst=peer.ip) / UDP(dport=9))
    _wait_learned(host, vm.port)
    lab.unplug("vm")
    _wait(lambda: host.status(vm.port)["learning"])
    lab.plug("vm")
    time.sleep(0.3)
    _send(lab, "vm", Ether(src=vm.mac, dst=peer.mac) / IP(src=vm.ip, dst=peer.ip) / UDP(dport=9))
    assert _wait_learned(host, vm.port)["learned"] == {"IP": [vm.ip]}


@pytest.mark.skipif(not (shutil.which("dnsmasq") and shutil.which("dhclient")), reason="dnsmasq or dhclient missing")
def test_real_dhcp_server_and_client(lab, host, learner, tmp_path):
    """dnsmasq in a namespace of its own on the bridge, dhclient in the VM: dhcp mode
    with DHCPSERVER learns the leased address from the real exchange."""
    vm = lab.guests["vm"]
    server = lab.add_vm("dhcp", "52:54:00:00:00:0d", "192.0.2.2")
    host.bind(Binding(vm.port, vm.mac, FilterRef("clean-traffic", {"CTRL_IP_LEARNING": ("dhcp",),
                                                                   "DHCPSERVER": (server.ip,)})))
    dnsmasq = subprocess.Popen(["ip", "netns", "exec", server.name, "dnsmasq", "--no-daemon", "--port=0",
                                "--interface=eth0", "--bind-interfaces", "--dhcp-range=192.0.2.100,192.0.2.150,2m",
                                f"--dhcp-leasefile={tmp_path / 'dnsmasq.leases'}", f"--pid-file={tmp_path / 'dm.pid'}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        client = subprocess.run(["ip", "netns", "exec", vm.name, "dhclient", "-1", "-4", "-sf", "/bin/true",
                                 "-lf", str(tmp_path / "client.leases"), "-pf", str(tmp_path / "client.pid"), "eth0"],
                                capture_output=True, text=True, timeout=30, check=False)
        assert client.returncode == 0, client.stderr
        status = _wait_learned(host, vm.port)
        address = status["learned"]["IP"][0]
        assert address.startswith("192.0.2.1") and 100 <= int(address.split(".")[-1]) <= 150
    finally:
        subprocess.run(["ip", "netns", "exec", vm.name, "dhclient", "-x", "-pf", str(tmp_path / "client.pid")],
                       capture_output=True, check=False)
        dnsmasq.terminate()
        dnsmasq.wait(10)


def test_any_mode_learns_ipv6_as_well(lab, host, learner):
    """libvirt never learns IPV6; here a tree that needs IP and IPV6 learns both in mode any."""
    from scapy.all import IPv6  # pylint: disable=import-outside-toplevel,no-name-in-module
    from engine.xml_form import filter_from_xml  # pylint: disable=import-outside-toplevel
    vm, peer = lab.guests["vm"], lab.guests["peer"]
    host.define_filter(filter_from_xml("""<filter name='dual'><filterref filter='no-mac-spoofing'/>
      <filterref filter='no-ip-spoofing'/><filterref filter='no-ipv6-spoofing'/></filter>"""))
    assert host.bind(Binding(vm.port, vm.mac, FilterRef("dual"))).learning == [vm.port]
    time.sleep(0.3)
    _send(lab, "vm", Ether(src=vm.mac, dst=peer.mac) / IP(src=vm.ip, dst=peer.ip) / UDP(dport=9))
    _wait(lambda: host.status(vm.port)["learned"].get("IP") == [vm.ip])
    assert host.status(vm.port)["learning"]  # IPV6 still missing
    _send(lab, "vm", Ether(src=vm.mac, dst=peer.mac) / IPv6(src=vm.ipv6, dst=peer.ipv6) / UDP(dport=9))
    assert _wait_learned(host, vm.port)["learned"] == {"IP": [vm.ip], "IPV6": [vm.ipv6]}
    verdicts = run_probes(lab, standard_probes(vm, peer))
    assert verdicts["ipv6"] and not verdicts["spoofed ipv6"] and not verdicts["spoofed ipv4"]
