"""The learner service in the lab: a VM's address learned from its own
traffic, then the full rules enforced (real frames, real nftables)."""

import threading
import time

import pytest
from scapy.all import ARP, BOOTP, DHCP, IP, UDP, Ether  # pylint: disable=no-name-in-module

from engine.model import Binding, FilterRef
from lab.netns import inside
from lab.probes import Probe, run_probes, standard_probes, tagged
from learner.leases import Leases
from learner.service import Learner


@pytest.fixture
def learner(lab, host, tmp_path):
    service = Learner(host, Leases(str(tmp_path / "leases.json")))
    stop = time.monotonic() + 20
    done = threading.Event()

    def serve():
        with inside(lab.host):
            while not done.is_set() and time.monotonic() < stop:
                service.run(rescan_every=0.1, until=time.monotonic() + 0.3)
    thread = threading.Thread(target=serve)
    thread.start()
    yield service
    done.set()
    thread.join()


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


def _ack(server_mac, server_ip, vm_mac, address):
    return Ether(src=server_mac, dst=vm_mac) / IP(src=server_ip, dst="255.255.255.255") / UDP(sport=67, dport=68) \
        / BOOTP(op=2, yiaddr=address, chaddr=bytes.fromhex(vm_mac.replace(":", ""))) \
        / DHCP(options=[("message-type", "ack"), ("server_id", server_ip), ("lease_time", 600), "end"])


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
