"""`vmguard-libvirt-hook <domain> <operation> <sub-operation> <extra>`, the
domain XML on stdin; installed as /etc/libvirt/hooks/qemu.d/vmguard.

Why ``start``: libvirt runs it after it has created the domain's taps (their
names are in the XML it passes) and before it launches the QEMU process, so
the rules are in the kernel before the guest exists; a non-zero exit there
makes libvirt abort the start. ``reconnect`` (libvirtd restarted) and
``attach`` bind the same way; ``stopped`` and ``release`` unbind (libvirt
ignores their exit status but logs it). Other operations are left alone and
nothing is written to stdout, so XML-rewriting operations (migrate, restore)
keep the XML as earlier hooks left it. Errors: one line on stderr, which
libvirt puts in its log and in the failed start's error message."""

from __future__ import annotations

import os
import sys
from typing import List, Optional, TextIO

from . import BIND, UNBIND

DEFAULT_ROOT = "/etc/vmguard"  # the engine's store.DEFAULT_ROOT, not imported: the fast path imports no engine


def main(argv: Optional[List[str]] = None, stdin: TextIO = sys.stdin, root: Optional[str] = None) -> int:
    """``root``: the store (default $VMGUARD_ROOT, else /etc/vmguard)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2:
        print("usage: vmguard-libvirt-hook <domain> <operation> [<sub-operation> <extra>] < domain.xml",
              file=sys.stderr)
        return 2
    text = stdin.read()  # always: libvirt writes the whole XML
    operation = args[1]
    if operation not in BIND + UNBIND:
        return 0  # before any import of the engine: the other phases cost only the interpreter's start
    root = root or os.environ.get("VMGUARD_ROOT") or DEFAULT_ROOT
    from .handoff import ask_service  # pylint: disable=import-outside-toplevel
    answer = ask_service(root, args[0], operation, text)
    if answer is None:  # no service: this process does it
        answer = _here(root, operation, text)
    if "error" in answer:
        print(f"vmguard-libvirt-hook: {args[0]} {operation}: {answer['error']}", file=sys.stderr)
        return 1
    if os.environ.get("VMGUARD_DEBUG"):
        print(f"vmguard-libvirt-hook: {args[0]} {operation}: {' '.join(answer['done']) or 'nothing'}"
              f"{' (by the service)' if answer.get('service') else ''}", file=sys.stderr)
    return 0


def _here(root: str, operation: str, text: str) -> dict:
    # pylint: disable=import-outside-toplevel
    from engine.errors import NwfilterError
    from engine.host import Host

    from .phases import run
    try:
        return {"done": run(Host(root), operation, text)}
    except NwfilterError as exc:
        return {"error": str(exc)}


if __name__ == "__main__":
    sys.exit(main())
