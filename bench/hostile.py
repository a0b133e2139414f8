"""Hostile input costs bounded work: the filter trees of issue #15, refused
quickly, and the measurements the rule limits come from (nft load time
against the rules of one binding, in a lab namespace).

    python -m bench.hostile [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Callable, Dict, List, Tuple

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "plugins", "module_utils"))

from engine import bounds  # noqa: E402  pylint: disable=wrong-import-position
from engine.errors import NwfilterError  # noqa: E402  pylint: disable=wrong-import-position
from engine.resolver import resolve  # noqa: E402  pylint: disable=wrong-import-position
from engine.host import Host  # noqa: E402  pylint: disable=wrong-import-position
from engine.model import Binding, Filter, FilterRef  # noqa: E402  pylint: disable=wrong-import-position
from engine.xml_form import filter_from_xml  # noqa: E402  pylint: disable=wrong-import-position

MAC = "52:54:00:00:00:01"
LEAF = "<rule action='accept' direction='in'><tcp dstportstart='22'/></rule>"


def fan_out(levels: int = 21, width: int = 2) -> List[str]:
    """``levels`` filters, each referencing the next ``width`` times: width**levels paths in ~1 KB of XML.
    Listed leaf first, the order in which they can be defined."""
    ref = "<filterref filter='fan{}'/>"
    return [f"<filter name='fan{levels}'>{LEAF}</filter>"] + [
        f"<filter name='fan{i}'>{ref.format(i + 1) * width}</filter>" for i in reversed(range(levels))]


def deep(levels: int = 1000) -> List[str]:
    """A chain of ``levels`` references, leaf first."""
    return [f"<filter name='deep{levels}'>{LEAF}</filter>"] + [
        f"<filter name='deep{i}'><filterref filter='deep{i + 1}'/></filter>" for i in reversed(range(levels))]


def cross_product(count: int = 300) -> Tuple[List[str], Binding]:
    """One rule with ``$IP[@1]`` x ``$PORT[@2]``, and a binding giving each ``count`` values."""
    xml = ("<filter name='cross'><rule action='accept' direction='in'>"
           "<tcp srcipaddr='$IP[@1]' dstportstart='$PORT[@2]'/></rule></filter>")
    params = {"IP": tuple(f"10.{i >> 8}.{i & 0xff}.1" for i in range(count)),
              "PORT": tuple(str(1 + i) for i in range(count))}
    return [xml], Binding("hostile0", MAC, FilterRef("cross", params))


def _timed(call: Callable[[], object]) -> Tuple[float, str]:
    start = time.perf_counter()
    try:
        call()
        outcome = "accepted"
    except NwfilterError as exc:
        outcome = str(exc)
    return time.perf_counter() - start, outcome


def _define_all(host: Host, texts: List[str]) -> Tuple[float, str]:
    """Define leaf first until one is refused: the time of the slowest define and how it ended."""
    slowest, outcome = 0.0, "accepted"
    for text in texts:
        elapsed, outcome = _timed(lambda text=text: host.define_filter(filter_from_xml(text)))
        slowest = max(slowest, elapsed)
        if outcome != "accepted":
            break
    return slowest, outcome


def _stored_tree(host: Host, texts: List[str]) -> None:
    """The tree written straight into the store, as a store from an older release may hold it."""
    filters: Dict[str, Filter] = {f.name: f for f in map(filter_from_xml, texts)}
    with host.store.locked():
        host.store.save(({}, {}, {}, {}), (filters, {}, {}, {}))


def hostile(netns: str) -> List[Tuple[str, float, float, float, str]]:
    """(case, slowest define, bind, resolve of the parsed tree alone, error) for each hostile tree."""
    results = []
    for case, texts in (("21 levels x 2 filterrefs", fan_out()), ("1000 levels deep", deep())):
        root = filter_from_xml(texts[-1]).name
        with tempfile.TemporaryDirectory() as store:
            define, _outcome = _define_all(Host(store, netns=netns), texts)
        with tempfile.TemporaryDirectory() as store:
            host = Host(store, netns=netns)
            _stored_tree(host, texts)
            binding = Binding("hostile0", MAC, FilterRef(root))
            filters = host.filters()
            alone, _outcome = _timed(lambda filters=filters, binding=binding: resolve(filters, binding))
            bind, outcome = _timed(lambda host=host, binding=binding: host.bind(binding))
        results.append((case, define, bind, alone, outcome))
    texts, binding = cross_product()
    with tempfile.TemporaryDirectory() as store:
        host = Host(store, netns=netns)
        define, _outcome = _define_all(host, texts)
        filters = host.filters()
        alone, _outcome = _timed(lambda: resolve(filters, binding))  # first: the bind would warm its caches
        bind, outcome = _timed(lambda: host.bind(binding))
    results.append(("$IP[@1] x $PORT[@2], 300 x 300", define, bind, alone, outcome))
    return results


def nft_load(netns: str, sizes: List[int]) -> List[Tuple[int, int, float, float]]:
    """(rule instances, nft rules, bind time, nft time) for one binding of a
    tcp rule over a list of ports: the per-binding limit's measurement. The
    limit is lifted here to measure past it."""
    results = []
    xml = ("<filter name='ports'><filterref filter='clean-traffic'/><rule action='accept' direction='in'>"
           "<tcp dstportstart='$PORT'/></rule></filter>")
    saved = bounds.MAX_BINDING_RULES
    bounds.MAX_BINDING_RULES = 10 ** 6
    try:
        for size in sizes:
            with tempfile.TemporaryDirectory() as store:
                host = Host(store, netns=netns)
                host.define_filter(filter_from_xml(xml))
                ports = tuple(str(1 + i) for i in range(size))
                binding = Binding("load0", MAC, FilterRef("ports", {"IP": ("10.0.0.2",), "PORT": ports}))
                applied: List[Tuple[float, str]] = []
                apply = host.nft.apply
                host.nft.apply = lambda script, apply=apply: applied.append(_timed(lambda: apply(script)))
                bind, outcome = _timed(lambda host=host, binding=binding: host.bind(binding))
                if outcome != "accepted":
                    raise SystemExit(f"{size} rules: {outcome}")
                rules = host.store.index()["load0"][1]
                results.append((size, rules, bind, applied[0][0]))
    finally:
        bounds.MAX_BINDING_RULES = saved
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer nft load sizes")
    args = parser.parse_args()
    from lab.netns import Lab  # pylint: disable=import-outside-toplevel
    print(f"# hostile input, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores")
    with Lab("hb") as lab:
        print("\n| hostile tree | slowest define | bind | resolve alone | refused with |\n"
              "| --- | --- | --- | --- | --- |")
        for case, define, bind, alone, outcome in hostile(lab.host):
            print(f"| {case} | {define * 1000:.1f} ms | {bind * 1000:.1f} ms | {alone * 1000:.1f} ms | {outcome} |")
        sizes = [1000, 3000, 5000] if args.quick else [1000, 3000, 5000, 8000, 12000]
        print(f"\n| one binding: rule instances | nft rules | bind | of which nft | (limit {bounds.MAX_BINDING_RULES}) |")
        print("| --- | --- | --- | --- | --- |")
        for size, rules, bind, nft in nft_load(lab.host, sizes):
            print(f"| {size} | {rules} | {bind:.2f} s | {nft:.2f} s | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
