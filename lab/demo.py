"""`make demo`: a lab (bridge, two VMs, an attacker VM, an "outside" network
behind the forward device ext0), playbooks/demo.yml applied by
ansible-playbook inside it (port filters and a NAT network), then real frames
and what happened to them, and what happens when someone edits our rules in
place. Everything lives in network namespaces removed at the end."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile

from .netns import Lab
from .network_lab import OUTSIDE, OUTSIDE_GATEWAY, add_outside, route_guests, tcp, udp, udp_spoofable
from .probes import SPOOFED_IPV4, run_probes, standard_probes

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
COLLECTIONS = os.path.join(REPO, ".build", "collections")
VMS = [("vm1", "52:54:00:00:00:01", "192.0.2.11", "2001:db8::11"),
       ("vm2", "52:54:00:00:00:02", "192.0.2.12", "2001:db8::12"),
       ("attacker", "52:54:00:00:00:0a", "192.0.2.66", "2001:db8::66")]
SHOWN = ["ipv4 udp", "ipv4 tcp syn", "arp request", "dhcp discover", "incoming ipv4", "spoofed mac",
         "spoofed ipv4", "arp spoofed ip", "arp spoofed mac", "vlan tagged", "ipv6"]


def main() -> int:
    with Lab("d") as lab, tempfile.TemporaryDirectory() as root:
        guests = [lab.add_vm(name, mac, ip, ipv6) for name, mac, ip, ipv6 in VMS]
        route_guests(lab)
        outside = add_outside(lab)
        vms = [{"portdev": g.port, "mac": g.mac, "parameters": {"IP": g.ip}} for g in guests]
        extra = {"vmguard_root": root, "vms": vms}
        print(f"lab: bridge br0 in namespace {lab.host}; VMs " +
              ", ".join(f"{vm[0]} ({g.port}, {g.mac}, {g.ip})" for vm, g in zip(VMS, guests)))
        env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS, ANSIBLE_LOCALHOST_WARNING="false",
                   ANSIBLE_INVENTORY_UNPARSED_WARNING="false", ANSIBLE_PYTHON_INTERPRETER=sys.executable)
        playbook = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
        done = subprocess.run(["ip", "netns", "exec", lab.host, playbook, "-i", "localhost,", "-c", "local",
                               os.path.join(REPO, "playbooks", "demo.yml"), "-e", json.dumps(extra)],
                              env=env, check=False)
        if done.returncode != 0:
            return done.returncode
        probes = [p for p in standard_probes(lab.guests["attacker"], lab.guests["vm1"], "attacker", "vm1")
                  if p.name in SHOWN]
        verdicts = run_probes(lab, probes)
        print("\nreal frames from the attacker VM (vnet2) to vm1, through the bridge and nftables:")
        print(f"  {'probe':22} {'expected':9} {'result':7}")
        ok = True
        for probe in sorted(probes, key=lambda p: SHOWN.index(p.name)):
            legit = SHOWN.index(probe.name) < 5
            arrived = verdicts[probe.name]
            ok &= arrived == legit
            print(f"  {probe.name:22} {'passes' if legit else 'dropped':9} {'passed' if arrived else 'DROPPED':7}"
                  f"{'' if arrived == legit else '   <-- unexpected'}")
        ok &= _nat_network(lab, outside)
        ok &= _tampered(lab, env, extra)
        print("\nall as expected" if ok else "\nSOME PROBES DID NOT BEHAVE AS EXPECTED")
        return 0 if ok else 1


def _nat_network(lab: Lab, outside: str) -> bool:
    """The NAT network: real connections between vm1 and the outside ({OUTSIDE[0]})."""
    vm1 = lab.guests["vm1"]
    checks = [
        ("vm1 -> outside, udp", udp(vm1.name, outside, OUTSIDE[0]), OUTSIDE_GATEWAY[0]),
        ("vm1 -> outside, tcp (replies pass)", tcp(vm1.name, outside, OUTSIDE[0]), OUTSIDE_GATEWAY[0]),
        ("outside -> vm1, new tcp connection", tcp(outside, vm1.name, vm1.ip), "refused"),
        ("vm1 -> outside, spoofed source 192.0.2.99", udp_spoofable(lab, "vm1", outside, "192.0.2.99", OUTSIDE[0]),
         None),
    ]
    print(f"\nthe NAT network (br0 -> ext0 -> outside {OUTSIDE[0]}), real connections:")
    print(f"  {'probe':42} {'expected':18} {'result':18}")
    ok = True
    for name, seen, expected in checks:
        shown = {None: "dropped", "refused": "refused"}
        want = shown.get(expected, f"from {expected}")
        got = shown.get(seen, f"from {seen}")
        ok &= seen == expected
        print(f"  {name:42} {want:18} {got:18}{'' if seen == expected else '   <-- unexpected'}")
    return ok


def _ad_hoc(lab: Lab, env: dict, module: str, arguments: dict) -> dict:
    """One module run as an ad hoc ``ansible`` command: its result."""
    ansible = os.path.join(os.path.dirname(sys.executable), "ansible")
    done = subprocess.run(["ip", "netns", "exec", lab.host, ansible, "localhost", "-i", "localhost,", "-c", "local",
                           "-o", "-m", module, "-a", json.dumps(arguments)], env=env, capture_output=True, text=True,
                          check=False)
    return json.loads(done.stdout.split(" => ", 1)[1]) if " => " in done.stdout else {"failed": done.stdout}


def _tampered(lab: Lab, env: dict, extra: dict) -> bool:
    """Someone adds the spoofed address to the attacker's addresses in the
    set our shared anti-spoofing chain looks them up in: spoofed frames
    pass, the report says so, and the fleet's next run of the same task
    takes the element out again."""
    port = lab.guests["attacker"].port
    addresses = re.search(r"set (s/[0-9a-f]+/v\d+) \{\n\t\ttypeof iifname \. ip saddr\n", lab.nft_list()).group(1)
    spoofed = [p for p in standard_probes(lab.guests["attacker"], lab.guests["vm1"], "attacker", "vm1")
               if p.name == "spoofed ipv4"]
    lab.nft(f'add element bridge vmguard {addresses} {{ "{port}" . {SPOOFED_IPV4} }}\n')
    print(f'\nsomeone adds "{port}" . {SPOOFED_IPV4} to {addresses}, the set of addresses each VM may send from:')
    passed = run_probes(lab, spoofed)["spoofed ipv4"]
    print(f"  {'spoofed ipv4, attacker -> vm1':42} {'passed' if passed else 'dropped'}")
    report = _ad_hoc(lab, env, "vmguard.nwfilter.nwfilter_info", {"root": extra["vmguard_root"], "portdev": port})
    status = report.get("bindings", {}).get(port, {})
    print(f"  {'nwfilter_info portdev=' + port:42} in_force={status.get('in_force')} "
          f"({status.get('not_in_force_because', '')})")
    bindings = [dict(vm, filter="demo-vm") for vm in extra["vms"]]
    rerun = _ad_hoc(lab, env, "vmguard.nwfilter.nwfilter_binding",
                    {"root": extra["vmguard_root"], "exclusive": True, "bindings": bindings})
    print(f"  {'the same binding task, run again':42} changed={rerun.get('changed')}, "
          f"repaired: {'; '.join(rerun.get('repaired', [])) or rerun.get('failed', '-')}")
    again = run_probes(lab, spoofed)["spoofed ipv4"]
    print(f"  {'spoofed ipv4, attacker -> vm1':42} {'passed   <-- unexpected' if again else 'dropped'}")
    return passed and status.get("in_force") is False and bool(rerun.get("changed")) and not again


if __name__ == "__main__":
    sys.exit(main())
