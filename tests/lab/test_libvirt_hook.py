"""The libvirt hook (libvirt_hook) run as libvirt runs it, inside the lab's
host namespace, with a domain XML whose tap names are the lab's ports:
binding at start, in one transaction and on this start's tap names, real
frames judged, unbinding at stop, and refusals that change nothing."""

import os
import subprocess
import sys

from engine.host import Host
from engine.libvirt_domain import NAMESPACE
from engine.model import Binding, FilterRef
from lab.probes import run_probes, standard_probes
from lab.service import Service, clone_env
from libvirt_hook.handoff import socket_path

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
UUIDS = {"vm": "11111111-2222-4333-8444-000000000001", "peer": "11111111-2222-4333-8444-000000000002"}


def domain_xml(name, interfaces, metadata=True, libvirt_filterref=False):
    """interfaces: (mac, tap, filter, {name: value})."""
    devices = "".join(f"<interface type='bridge'><mac address='{mac}'/><source bridge='br0'/>"
                      f"<target dev='{tap}'/>{'<filterref filter=%r/>' % flt if libvirt_filterref else ''}"
                      "</interface>" for mac, tap, flt, _params in interfaces)
    ours = "".join(f"<vmguard:interface mac='{mac}'><vmguard:filterref filter='{flt}'>"
                   + "".join(f"<vmguard:parameter name='{k}' value='{v}'/>" for k, v in params.items())
                   + "</vmguard:filterref></vmguard:interface>" for mac, _tap, flt, params in interfaces)
    meta = f"<metadata><vmguard:nwfilter xmlns:vmguard='{NAMESPACE}'>{ours}</vmguard:nwfilter></metadata>"
    return (f"<domain type='qemu'><name>{name}</name><uuid>{UUIDS[name]}</uuid>"
            f"{meta if metadata else ''}<devices>{devices}</devices></domain>")


def hook(lab, root, name, operation, xml, debug=False):
    env = clone_env(VMGUARD_ROOT=root, **({"VMGUARD_DEBUG": "1"} if debug else {}))
    return subprocess.run(["ip", "netns", "exec", lab.host, sys.executable, "-m", "libvirt_hook", name, operation,
                           "begin", "-"], input=xml, capture_output=True, text=True, env=env, check=False, cwd=REPO)


def guest_spec(lab, name, port=None):
    guest = lab.guests[name]
    return (guest.mac, port or guest.port, "clean-traffic", {"IP": guest.ip})


def test_start_binds_this_starts_taps_and_stop_unbinds(lab, tmp_path):
    root = str(tmp_path / "store")
    host = Host(root, netns=lab.host)
    vm, peer = lab.guests["vm"], lab.guests["peer"]
    # left over from an earlier life: the vm's binding on the peer's tap, and the peer's on the vm's
    host.set_bindings([Binding(peer.port, vm.mac, FilterRef("clean-traffic", {"IP": (vm.ip,)}), owner_name="vm",
                               owner_uuid=UUIDS["vm"]),
                       Binding(vm.port, peer.mac, FilterRef("clean-traffic", {"IP": (peer.ip,)}))])
    done = hook(lab, root, "vm", "start", domain_xml("vm", [guest_spec(lab, "vm")]))
    assert done.returncode == 0 and not done.stdout, done.stderr
    bindings = host.bindings()
    assert set(bindings) == {vm.port} and bindings[vm.port].mac == vm.mac
    assert bindings[vm.port].owner_uuid == UUIDS["vm"]
    verdicts = run_probes(lab, standard_probes(vm, peer), wait=0.2)
    assert verdicts["ipv4 udp"] and not verdicts["spoofed ipv4"] and not verdicts["spoofed mac"]
    # a phase that is not ours changes nothing and prints nothing (XML-rewriting phases keep their XML)
    untouched = hook(lab, root, "vm", "migrate", domain_xml("vm", [guest_spec(lab, "vm")]))
    assert untouched.returncode == 0 and not untouched.stdout and set(host.bindings()) == {vm.port}
    gone = hook(lab, root, "vm", "stopped", domain_xml("vm", [guest_spec(lab, "vm")], metadata=False))
    assert gone.returncode == 0 and host.bindings() == {} and f'"{vm.port}"' not in lab.nft_list()
    assert all(run_probes(lab, standard_probes(vm, peer), wait=0.2).values())


def test_refused_start_fails_with_one_line_and_changes_nothing(lab, tmp_path):
    root = str(tmp_path / "store")
    host = Host(root, netns=lab.host)
    peer = lab.guests["peer"]
    host.bind(Binding(peer.port, peer.mac, FilterRef("clean-traffic", {"IP": (peer.ip,)})))
    ruleset = lab.nft_list()
    for xml, words in (
            (domain_xml("vm", [guest_spec(lab, "vm")], libvirt_filterref=True), "also has a <filterref>"),
            (domain_xml("vm", [guest_spec(lab, "vm")]).replace("'clean-traffic'", "'nope'"), "nope"),
            (domain_xml("vm", [guest_spec(lab, "vm", port="bad port")]), "invalid interface name")):
        done = hook(lab, root, "vm", "start", xml)
        assert done.returncode == 1 and done.stderr.startswith("vmguard-libvirt-hook: vm start: domain 'vm'")
        assert done.stderr.count("\n") == 1 and words in done.stderr, done.stderr
        assert lab.nft_list() == ruleset and set(host.bindings()) == {peer.port}


def test_with_the_service_running_the_service_does_the_change(lab, tmp_path):
    """The hook hands the change to the running service (its engine warm):
    the same bindings, an error still refuses the start, and with the
    service gone the hook does it in its own process again."""
    root = str(tmp_path / "store")
    host = Host(root, netns=lab.host)
    vm, peer = lab.guests["vm"], lab.guests["peer"]
    xml = domain_xml("vm", [guest_spec(lab, "vm")])
    with Service(lab, root):
        done = hook(lab, root, "vm", "start", xml, debug=True)
        assert done.returncode == 0 and f"{vm.port} (by the service)" in done.stderr, done.stderr
        assert set(host.bindings()) == {vm.port} and host.bindings()[vm.port].owner_uuid == UUIDS["vm"]
        verdicts = run_probes(lab, standard_probes(vm, peer), wait=0.2)
        assert verdicts["ipv4 udp"] and not verdicts["spoofed ipv4"]
        refused = hook(lab, root, "peer", "start", domain_xml("peer", [guest_spec(lab, "peer")],
                                                              libvirt_filterref=True), debug=True)
        assert refused.returncode == 1 and "also has a <filterref> in <interface>" in refused.stderr
        done = hook(lab, root, "vm", "stopped", xml, debug=True)
        assert done.returncode == 0 and "(by the service)" in done.stderr and host.bindings() == {}
    done = hook(lab, root, "vm", "start", xml, debug=True)  # no service: done here
    assert done.returncode == 0 and "by the service" not in done.stderr and set(host.bindings()) == {vm.port}


def test_the_service_removes_its_socket_when_it_stops(lab, tmp_path):
    """systemd stops the service with SIGTERM: the hook's socket goes with it."""
    root = str(tmp_path / "store")
    with Service(lab, root):
        assert os.path.exists(socket_path(root))
    assert not os.path.exists(socket_path(root))
