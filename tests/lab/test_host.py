"""The Host facade against the real kernel: transactions, redefinition,
refusals that change nothing, transient interfaces and stateful rules."""

import os
import socket
import threading

import pytest

from engine.errors import NwfilterError
from engine.host import Host
from engine.model import Binding, FilterRef
from engine.resolver import MissingVariables
from engine.xml_form import filter_from_xml
from lab.netns import inside
from lab.probes import run_probes, standard_probes

UDP_DROP = """<filter name='f'>
  <rule action='drop' direction='out'><ip protocol='udp' dstportstart='5000'/></rule>
  <rule action='drop' direction='out'><ip protocol='udp' dstportstart='{port}'/></rule>
</filter>"""


def _store_files(root):
    found = {}
    for base, _dirs, files in os.walk(root):
        for name in files:
            with open(os.path.join(base, name), encoding="utf-8") as handle:
                found[os.path.join(base, name)] = handle.read()
    return found


def _udp_probes(lab, ports):
    from scapy.all import IP, UDP, Ether  # pylint: disable=import-outside-toplevel,no-name-in-module
    from lab.probes import Probe, tagged  # pylint: disable=import-outside-toplevel
    vm, peer = lab.guests["vm"], lab.guests["peer"]
    return [Probe(f"udp {p}", "vm", "peer", tagged(Ether(src=vm.mac, dst=peer.mac) / IP(src=vm.ip, dst=peer.ip)
                                                   / UDP(sport=4000, dport=p))) for p in ports]


def test_define_bind_redefine_identical_and_unbind(lab, host):
    vm = lab.guests["vm"]
    assert host.define_filter(filter_from_xml(UDP_DROP.format(port=5001))).changed
    assert not host.define_filter(filter_from_xml(UDP_DROP.format(port=5001))).changed
    result = host.bind(Binding(vm.port, vm.mac, FilterRef("f")))
    assert result.changed and result.rebuilt == [vm.port]
    assert not host.bind(Binding(vm.port, vm.mac, FilterRef("f"))).changed
    verdicts = run_probes(lab, _udp_probes(lab, [5000, 5001, 5003]))
    assert verdicts == {"udp 5000": False, "udp 5001": False, "udp 5003": True}
    redefined = host.define_filter(filter_from_xml(UDP_DROP.format(port=5002)))
    assert redefined.rebuilt == [vm.port]
    assert run_probes(lab, _udp_probes(lab, [5001, 5002]))["udp 5001"]
    with pytest.raises(NwfilterError, match="in use by binding vnet0"):
        host.undefine_filter("f")
    assert host.unbind(vm.port).changed
    assert '"vnet0"' not in lab.nft_list()
    assert host.undefine_filter("f").changed


def test_the_nft_command_works_as_well_as_the_library(lab, tmp_path):
    vm = lab.guests["vm"]
    host = Host(str(tmp_path / "cmd"), ["nft"], netns=lab.host)  # the command, run inside the lab's namespace
    host.bind(Binding(vm.port, vm.mac, FilterRef("clean-traffic", {"IP": (vm.ip,)})))
    assert '"vnet0" . 192.0.2.10' in host.status(vm.port)["nft"]
    verdicts = run_probes(lab, standard_probes(vm, lab.guests["peer"]))
    assert verdicts["ipv4 udp"] and not verdicts["spoofed ipv4"]


def test_check_mode_changes_nothing(lab, host):
    vm = lab.guests["vm"]
    before = lab.nft_list()
    result = host.bind(Binding(vm.port, vm.mac, FilterRef("clean-traffic", {"IP": ("192.0.2.10",)})), check=True)
    assert result.changed and lab.nft_list() == before and host.bindings() == {}


def test_failed_redefine_changes_nothing_anywhere(lab, host, tmp_path):
    vm = lab.guests["vm"]
    host.define_filter(filter_from_xml(UDP_DROP.format(port=5001)))
    host.bind(Binding(vm.port, vm.mac, FilterRef("f")))
    host.bind(Binding("absent1", "52:54:00:00:00:31", FilterRef("f", {"X": ("5005",)})))
    ruleset, files = lab.nft_list(), _store_files(tmp_path / "store")
    needs_x = UDP_DROP.format(port="$X")
    with pytest.raises(NwfilterError, match="not changed: binding .vnet0.: missing variable X"):
        host.define_filter(filter_from_xml(needs_x))
    assert lab.nft_list() == ruleset and _store_files(tmp_path / "store") == files
    with pytest.raises(NwfilterError, match="nft refused|not supported"):
        host.define_filter(filter_from_xml(
            "<filter name='f'><rule action='drop' direction='out'><arp gratuitous='true'/></rule></filter>"))
    assert lab.nft_list() == ruleset and _store_files(tmp_path / "store") == files


def test_missing_variables_and_learning(lab, host):
    vm = lab.guests["vm"]
    with pytest.raises(MissingVariables, match="GATEWAY_MAC"):
        host.bind(Binding(vm.port, vm.mac, FilterRef("clean-traffic-gateway")))
    with pytest.raises(MissingVariables, match="IP"):
        host.bind(Binding(vm.port, vm.mac, FilterRef("clean-traffic", {"CTRL_IP_LEARNING": ("none",)})))
    assert host.bind(Binding(vm.port, vm.mac, FilterRef("clean-traffic"))).learning == [vm.port]
    assert list(host.waiting()) == [vm.port] == list(host.waiting(["vnet9", vm.port]))
    assert host.learned(vm.port, ["192.0.2.10"]).learning == []
    verdicts = run_probes(lab, standard_probes(lab.guests["vm"], lab.guests["peer"]))
    assert verdicts["ipv4 udp"] and not verdicts["spoofed ipv4"]
    assert host.status(vm.port)["learned"] == {"IP": ["192.0.2.10"]}


def test_transient_interface(lab, host):
    guest = lab.add_vm("late", "52:54:00:00:00:05", "192.0.2.15", "2001:db8::15", port="vnet9")
    lab.unplug("late")
    host.bind(Binding("vnet9", guest.mac, FilterRef("clean-traffic", {"IP": (guest.ip,)})))
    lab.plug("late")
    for _round in range(2):
        probes = [p for p in standard_probes(guest, lab.guests["peer"], "late") if p.name in ("ipv4 udp", "spoofed ipv4")]
        assert run_probes(lab, probes) == {"ipv4 udp": True, "spoofed ipv4": False}
        lab.unplug("late")
        lab.plug("late")


def test_redefine_under_traffic_with_50_bindings(lab, host):
    vm = lab.guests["vm"]
    host.define_filter(filter_from_xml(UDP_DROP.format(port=5001)))
    bindings = [Binding(vm.port, vm.mac, FilterRef("f"))] + [
        Binding(f"absent{i}", f"52:54:00:00:01:{i:02x}", FilterRef("f")) for i in range(49)]
    assert len(host.set_bindings(bindings).rebuilt) == 50
    stop = threading.Event()
    errors = []

    def flip():
        port = 5001
        while not stop.is_set():
            port = 5002 if port == 5001 else 5001
            try:
                assert len(host.define_filter(filter_from_xml(UDP_DROP.format(port=port))).rebuilt) == 50
            except Exception as exc:  # pylint: disable=broad-except
                errors.append(exc)
                return

    flipper = threading.Thread(target=flip)
    flipper.start()
    try:
        for _round in range(15):
            verdicts = run_probes(lab, _udp_probes(lab, [5000, 5003]), wait=0.1)
            assert verdicts == {"udp 5000": False, "udp 5003": True}
    finally:
        stop.set()
        flipper.join()
    assert not errors


def _connect(ns, address, port):
    with inside(ns):
        sock = socket.socket()
    sock.settimeout(1.0)
    try:
        sock.connect((address, port))
        return True
    except OSError:
        return False
    finally:
        sock.close()


def _listen(ns, port):
    with inside(ns):
        sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", port))
    sock.listen(8)
    return sock


STATEFUL = """<filter name='ssh-only'>
  <filterref filter='clean-traffic'/>
  <rule action='accept' direction='in'><tcp dstportstart='22'/></rule>
  <rule action='accept' direction='out'><all/></rule>
  <rule action='drop' direction='inout'><all/></rule>
</filter>"""


def test_stateful_rules_through_conntrack(lab, host):
    vm, peer = lab.guests["vm"], lab.guests["peer"]
    host.define_filter(filter_from_xml(STATEFUL))
    host.bind(Binding(vm.port, vm.mac, FilterRef("ssh-only", {"IP": (vm.ip,)})))
    listeners = [_listen(vm.name, 22), _listen(vm.name, 23), _listen(peer.name, 80)]
    try:
        assert _connect(peer.name, vm.ip, 22)        # new inbound to 22: allowed
        assert not _connect(peer.name, vm.ip, 23)    # new inbound elsewhere: dropped
        assert _connect(vm.name, peer.ip, 80)        # the VM's own connection and its replies
    finally:
        for sock in listeners:
            sock.close()


NOT_NEW_IN = """<filter name='not-new-in'>
  <rule action='drop' direction='in'><udp srcportstart='53' state='NEW' match='no'/></rule>
</filter>"""


def test_negated_state_through_conntrack(lab, host):
    """match='no' negates every attribute, state included: this drops traffic to the VM
    that is not new (replies) unless it comes from port 53."""
    from scapy.all import IP, UDP, Ether  # pylint: disable=import-outside-toplevel,no-name-in-module
    from lab.probes import Probe, tagged  # pylint: disable=import-outside-toplevel
    vm, peer = lab.guests["vm"], lab.guests["peer"]
    host.define_filter(filter_from_xml(NOT_NEW_IN))
    host.bind(Binding(vm.port, vm.mac, FilterRef("not-new-in")))

    def udp(name, sender, sport, dport):
        src, dst = (vm, peer) if sender == "vm" else (peer, vm)
        frame = Ether(src=src.mac, dst=dst.mac) / IP(src=src.ip, dst=dst.ip) / UDP(sport=sport, dport=dport)
        return Probe(name, sender, "peer" if sender == "vm" else "vm", tagged(frame))
    assert run_probes(lab, [udp("new to the vm", "peer", 4000, 5000),
                            udp("vm asks", "vm", 6000, 7000), udp("vm asks 53", "vm", 6001, 53)]) == \
        {"new to the vm": True, "vm asks": True, "vm asks 53": True}
    assert run_probes(lab, [udp("reply", "peer", 7000, 6000), udp("reply from 53", "peer", 53, 6001)]) == \
        {"reply": False, "reply from 53": True}


def _bind_many(root, netns, prefix, count):
    host = Host(root, netns=netns)
    for index in range(count):
        host.bind(Binding(f"{prefix}{index}", f"52:54:00:00:{0x10 if prefix == 'a' else 0x20:02x}:{index:02x}",
                          FilterRef("clean-traffic", {"IP": (f"192.0.2.{index + 100}",)})))


def _in_parallel(target, argument_lists):
    """Run ``target`` once per argument list, each in a process of its own, all at once."""
    import multiprocessing  # pylint: disable=import-outside-toplevel
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=target, args=args) for args in argument_lists]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0


def test_concurrent_runs_lose_no_update(lab, tmp_path):
    """Two processes (two Ansible runs, or a run and the learner) changing the same host at once."""
    root = str(tmp_path / "shared")
    _in_parallel(_bind_many, [(root, lab.host, prefix, 12) for prefix in ("a", "b")])
    host = Host(root, netns=lab.host)
    assert len(host.bindings()) == 24
    assert set(host.nft.live()) == set(host.bindings())


def _bind_one(root, netns, index):
    Host(root, netns=netns).bind(Binding(f"c{index}", f"52:54:00:00:30:{index:02x}",
                                         FilterRef("clean-traffic", {"IP": (f"192.0.2.{index + 150}",)})))


def test_16_concurrent_calls_on_different_ports(lab, tmp_path):
    """16 module runs at once, each binding its own port: every one lands, in the store and in the kernel."""
    root = str(tmp_path / "shared")
    _in_parallel(_bind_one, [(root, lab.host, index) for index in range(16)])
    host = Host(root, netns=lab.host)
    assert sorted(host.bindings()) == sorted(f"c{index}" for index in range(16))
    assert set(host.nft.live()) == set(host.bindings())
    assert host.converge(check=True).repaired == []


def test_restore_after_the_rules_are_gone(lab, host):
    vm = lab.guests["vm"]
    host.bind(Binding(vm.port, vm.mac, FilterRef("clean-traffic", {"IP": (vm.ip,)})))
    lab.nft("delete table bridge vmguard\ndelete table inet vmguard\n")  # what a reboot does
    assert run_probes(lab, standard_probes(vm, lab.guests["peer"]))["spoofed ipv4"]
    assert host.bind(Binding("other0", "52:54:00:00:00:33", FilterRef("clean-traffic"))).changed  # tables come back
    assert host.restore().rebuilt == ["other0", vm.port]
    assert not run_probes(lab, standard_probes(vm, lab.guests["peer"]))["spoofed ipv4"]
