"""Virtual networks with real traffic: a VM on br0 in the lab host H reaches
an "outside" namespace through the forward device ext0; what the outside
sees, and what is refused, is the kernel's verdict on our rules."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from lab.netns import PEER, VM, Lab, run  # noqa: E402  pylint: disable=wrong-import-position
from lab.network_lab import (OUTSIDE, OUTSIDE_GATEWAY, add_outside, create_bridge, delete_bridge,  # noqa: E402
                             plug_outside, route_guests, tcp, udp, udp_source, udp_spoofable)
from engine.dict_form import binding_from_dict  # noqa: E402  pylint: disable=wrong-import-position
from engine.errors import NwfilterError  # noqa: E402  pylint: disable=wrong-import-position
from engine.host import Host  # noqa: E402  pylint: disable=wrong-import-position
from engine.network_forms import network_from_dict  # noqa: E402  pylint: disable=wrong-import-position


@pytest.fixture
def netlab():
    if os.geteuid() != 0:
        pytest.skip("the lab needs root (network namespaces)")
    with Lab("n") as built:
        built.add_vm("vm", *VM)
        built.add_vm("peer", *PEER)
        route_guests(built)
        yield built


@pytest.fixture
def host(netlab, tmp_path):
    return Host(str(tmp_path / "store"), netns=netlab.host)


def network(mode, dev="ext0", **extra):
    data = {"name": "lab", "bridge": "br0", "forward": {"mode": mode}, "ipv4": ["192.0.2.1/24"],
            "ipv6": ["2001:db8::1/64"], **extra}
    if dev:
        data["forward"]["dev"] = dev
    return network_from_dict(data)


def vm_ns(lab):
    return lab.guests["vm"].name


def test_nat(netlab, host):
    out = add_outside(netlab)
    host.networks.define([network("nat")])
    vm = vm_ns(netlab)
    assert udp(vm, out, OUTSIDE[0]) == OUTSIDE_GATEWAY[0]        # masqueraded
    assert tcp(vm, out, OUTSIDE[0]) == OUTSIDE_GATEWAY[0]        # replies to the guest's connection pass
    assert tcp(out, vm, VM[1]) == "refused"                      # new connections from outside do not
    assert udp(out, vm, VM[1]) is None
    assert udp(vm, out, OUTSIDE[1]) == VM[2]                     # IPv6 without nat ipv6: routed (libvirt)
    assert udp(vm, netlab.guests["peer"].name, PEER[1]) == VM[1]  # guests reach each other
    assert udp(vm, netlab.host, "192.0.2.1") == VM[1]             # and the host


def test_nat_ipv6_and_options(netlab, host):
    out = add_outside(netlab)
    options = {"ipv6": True, "ports": "20000-20010", "addresses": "198.51.100.1-198.51.100.1"}
    host.networks.define([network("nat", nat=options)])
    vm = vm_ns(netlab)
    assert udp(vm, out, OUTSIDE[1]) == OUTSIDE_GATEWAY[1]
    assert udp(vm, out, OUTSIDE[0]) == OUTSIDE_GATEWAY[0]
    assert tcp(out, vm, VM[2]) == "refused"
    address, port = udp_source(vm, out, OUTSIDE[0], port=7004)
    assert address == OUTSIDE_GATEWAY[0] and 20000 <= port <= 20010  # the translated source port is in range


def test_route(netlab, host):
    out = add_outside(netlab)
    host.networks.define([network("route")])
    vm = vm_ns(netlab)
    assert udp(vm, out, OUTSIDE[0]) == VM[1]
    assert udp(vm, out, OUTSIDE[1]) == VM[2]
    assert tcp(out, vm, VM[1]) == OUTSIDE[0]                     # routed both ways, no state needed


def test_isolated_and_open(netlab, host):
    out = add_outside(netlab)
    netlab.sh(netlab.host, "sysctl -qw net.ipv4.ip_forward=1", "sysctl -qw net.ipv6.conf.all.forwarding=1")
    vm = vm_ns(netlab)
    host.networks.define([network("isolated", dev=None)])
    assert udp(vm, out, OUTSIDE[0]) is None
    assert tcp(vm, out, OUTSIDE[0]) == "refused"
    assert udp(vm, out, OUTSIDE[1]) is None
    assert tcp(out, vm, VM[1]) == "refused"
    assert udp(vm, netlab.guests["peer"].name, PEER[1]) == VM[1]
    assert udp(vm, netlab.host, "192.0.2.1") == VM[1]
    host.networks.define([network("open", dev=None)])
    assert udp(vm, out, OUTSIDE[0]) == VM[1]                     # no rules at all
    assert "vmguard-net" not in netlab.nft_list()


def test_forward_device_missing_then_recreated(netlab, host):
    host.networks.define([network("nat")])                       # ext0 does not exist yet
    out = add_outside(netlab)
    vm = vm_ns(netlab)
    assert udp(vm, out, OUTSIDE[0]) == OUTSIDE_GATEWAY[0]
    netlab.sh(netlab.host, "ip link del ext0")
    plug_outside(netlab, out)
    assert udp(vm, out, OUTSIDE[0], port=7002) == OUTSIDE_GATEWAY[0]
    assert tcp(out, vm, VM[1]) == "refused"


def test_bridge_missing_then_recreated(netlab, host):
    out = add_outside(netlab)
    delete_bridge(netlab)
    host.networks.define([network("nat")])                       # br0 does not exist
    create_bridge(netlab)
    vm = vm_ns(netlab)
    assert udp(vm, out, OUTSIDE[0]) == OUTSIDE_GATEWAY[0]
    assert tcp(out, vm, VM[1]) == "refused"
    delete_bridge(netlab)
    create_bridge(netlab)
    assert udp(vm, out, OUTSIDE[0], port=7003) == OUTSIDE_GATEWAY[0]
    assert tcp(out, vm, VM[1]) == "refused"


def test_clean_traffic_on_a_nat_network(netlab, host):
    out = add_outside(netlab)
    host.networks.define([network("nat")])
    host.bind(binding_from_dict({"portdev": netlab.guests["vm"].port, "mac": VM[0], "filter": "clean-traffic",
                                 "parameters": {"IP": VM[1]}}))
    assert udp(vm_ns(netlab), out, OUTSIDE[0]) == OUTSIDE_GATEWAY[0]
    assert udp_spoofable(netlab, "vm", out, VM[1], OUTSIDE[0]) == OUTSIDE_GATEWAY[0]  # its own address: NATed
    assert udp_spoofable(netlab, "vm", out, "192.0.2.99", OUTSIDE[0]) is None        # spoofed: the port filter drops it


def test_absent_leaves_nothing_and_ports_untouched(netlab, host):
    host.bind(binding_from_dict({"portdev": netlab.guests["vm"].port, "mac": VM[0], "filter": "clean-traffic",
                                 "parameters": {"IP": VM[1]}}))
    before = netlab.nft_list()
    result = host.networks.define([network("nat")])
    assert result.changed and result.after.startswith("<network>")
    assert not host.networks.define([network("nat")]).changed   # idempotent
    assert host.networks.status()["lab"]["enforced"]
    removed = host.networks.undefine(["lab"])
    assert removed.changed and removed.after is None
    assert netlab.nft_list() == before                            # our network table is gone, ports as they were
    assert os.listdir(host.store.dirs["networks"]) == []


def test_bad_input_changes_nothing(netlab, host):
    host.networks.define([network("nat")])
    before = netlab.nft_list()
    other = network_from_dict({"name": "other", "bridge": "br1", "forward": {"mode": "route"},
                               "ipv4": ["192.0.2.129/25"]})
    with pytest.raises(NwfilterError, match="networks 'lab' and 'other': 192.0.2.0/24 and 192.0.2.128/25 overlap"):
        host.networks.define([other])
    same_bridge = network_from_dict({"name": "other", "bridge": "br0", "ipv4": ["10.9.0.1/24"]})
    with pytest.raises(NwfilterError, match="use the same bridge"):
        host.networks.define([same_bridge])
    assert netlab.nft_list() == before
    assert sorted(host.networks.all()) == ["lab"]
    assert host.networks.define([network("route")], check=True).changed  # check mode: nothing applied
    assert netlab.nft_list() == before


def test_a_change_keeps_established_connections(netlab, host):
    import socket  # pylint: disable=import-outside-toplevel
    from lab.netns import inside  # pylint: disable=import-outside-toplevel
    out = add_outside(netlab)
    host.networks.define([network("nat")])
    with inside(out):
        listener = socket.create_server(("0.0.0.0", 7010))
    with inside(vm_ns(netlab)):
        client = socket.create_connection((OUTSIDE[0], 7010), timeout=2)
    with listener, client:
        server, peer = listener.accept()
        with server:
            assert peer[0] == OUTSIDE_GATEWAY[0]
            host.networks.define([network("nat", nat={"ports": "30000-30010"})])  # the table is rebuilt
            client.sendall(b"still here")
            server.settimeout(2)
            assert server.recv(100) == b"still here"
            server.sendall(b"and back")
            assert client.recv(100) == b"and back"


def test_store_failure_puts_the_old_table_back(netlab, host, monkeypatch):
    host.networks.define([network("nat")])
    before = netlab.nft_list()

    def fail(*_args):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(host.store, "save_networks", fail)
    with pytest.raises(NwfilterError, match="cannot write the store .*No space left on device; nothing changed"):
        host.networks.define([network("route")])
    assert netlab.nft_list() == before


def test_restore_after_the_table_is_gone(netlab, host):
    out = add_outside(netlab)
    host.networks.define([network("nat")])
    netlab.nft("delete table inet vmguard-net")                  # a reboot, a flush
    assert not host.networks.status()["lab"]["enforced"]
    assert udp(vm_ns(netlab), out, OUTSIDE[0]) == VM[1]           # forwarded, but no longer NATed
    host.networks.restore()
    assert host.networks.status()["lab"]["enforced"]
    assert udp(vm_ns(netlab), out, OUTSIDE[0], port=7011) == OUTSIDE_GATEWAY[0]


def test_every_change_repairs_a_damaged_table_first(netlab, host):
    out = add_outside(netlab)
    host.networks.define([network("nat")])
    assert host.networks.converge().changed is False               # nothing damaged: nothing to do
    for damage, found in (
            (lambda: "flush chain inet vmguard-net postrouting", "chain inet vmguard-net postrouting has 0"),
            (lambda: "delete table inet vmguard-net", "table inet vmguard-net is missing"),
            # same rule count, same handle: only the rule's content tells
            (lambda: "replace rule inet vmguard-net postrouting handle "
                     f"{netlab.rule_handle('postrouting', '@nat4', 'inet', 'vmguard-net')} accept",
             "chain inet vmguard-net postrouting has other rules than we put there"),
            (lambda: "delete element inet vmguard-net nat4 { 192.0.2.0/24 }\n"
                     "add element inet vmguard-net nat4 { 192.0.2.0/24 : accept }",
             "map inet vmguard-net nat4 has other elements than we put there"),
            (lambda: "add table inet vmguard-net { flags dormant; }", "table inet vmguard-net is dormant")):
        netlab.nft(damage())
        assert not host.networks.status()["lab"]["enforced"]
        assert udp(vm_ns(netlab), out, OUTSIDE[0]) == VM[1]        # no longer NATed
        assert any(found in line for line in host.networks.converge(check=True).repaired)
        result = host.networks.define([network("nat")])           # the same network: only the repair changes
        assert result.changed and result.networks == [] and any(found in line for line in result.repaired)
        assert udp(vm_ns(netlab), out, OUTSIDE[0], port=7012) == OUTSIDE_GATEWAY[0]
    assert host.networks.converge().changed is False


def test_more_than_one_range(netlab, host):
    out = add_outside(netlab)
    netlab.sh(netlab.host, "ip addr add 10.3.0.1/24 dev br0")
    host.networks.define([network("nat", ipv4=["192.0.2.1/24", "10.3.0.1/24"])])
    assert udp_spoofable(netlab, "vm", out, VM[1], OUTSIDE[0]) == OUTSIDE_GATEWAY[0]       # first range: NATed
    assert udp_spoofable(netlab, "vm", out, "10.3.0.10", OUTSIDE[0]) == OUTSIDE_GATEWAY[0]  # second range too
    assert udp_spoofable(netlab, "vm", out, "10.4.0.10", OUTSIDE[0]) is None               # neither: refused


def test_forwarding_turned_on_as_libvirt_does(netlab, host):
    def forwarding():
        return [run(["ip", "netns", "exec", netlab.host, "sysctl", "-n", name]).stdout.strip()
                for name in ("net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding")]
    host.networks.define([network("isolated", dev=None)])
    assert forwarding() == ["0", "0"]
    host.networks.define([network("route", ipv6=[])])
    assert forwarding() == ["1", "0"]
    host.networks.define([network("route")])                     # now IPv6 too
    assert forwarding() == ["1", "1"]
    netlab.sh(netlab.host, "sysctl -qw net.ipv4.ip_forward=0", "sysctl -qw net.ipv6.conf.all.forwarding=0")
    host.networks.restore()                                       # a boot
    assert forwarding() == ["1", "1"]
