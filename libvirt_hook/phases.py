"""What the hook does at the phases it acts on, through the engine."""

from __future__ import annotations

from typing import List

from engine.errors import NwfilterError
from engine.host import Host
from engine.libvirt_domain import Domain

from . import BIND


def bind(host: Host, domain: Domain) -> List[str]:
    """One transaction: this start's bindings, and away with the domain's
    earlier ones and whatever another domain left bound to these tap names."""
    both = domain.doubly_filtered()
    if both:
        raise NwfilterError(f"interface {', '.join(both)} also has a <filterref> in <interface>, so libvirt's "
                            "nwfilter would filter it too: remove that <filterref>", domain.where)
    wanted = domain.bindings()
    try:
        host.set_bindings(wanted, unbind=domain.taps, unbind_owner=domain.uuid)
    except NwfilterError as exc:
        raise exc.within(domain.where) from None
    return [b.portdev for b in wanted]


def unbind(host: Host, domain: Domain) -> List[str]:
    """The domain's bindings, found by owner UUID: at stopped and release the
    XML no longer names the taps."""
    return host.set_bindings([], unbind_owner=domain.uuid).removed


def run(host: Host, operation: str, xml: str) -> List[str]:
    """Bind or unbind (by ``operation``) the domain of this XML: the ports done."""
    domain = Domain(xml)
    return bind(host, domain) if operation in BIND else unbind(host, domain)
