"""Fixtures for real-packet tests: a fresh lab (host with br0, a VM, a peer)
in namespaces of its own, and a Host whose nft runs inside the lab."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from lab.netns import PEER, VM, Lab  # noqa: E402  pylint: disable=wrong-import-position
from engine.host import Host  # noqa: E402  pylint: disable=wrong-import-position


@pytest.fixture
def lab():
    if os.geteuid() != 0:
        pytest.skip("the lab needs root (network namespaces)")
    with Lab() as built:
        built.add_vm("vm", *VM)
        built.add_vm("peer", *PEER)
        yield built


@pytest.fixture
def host(lab, tmp_path):
    return Host(str(tmp_path / "store"), netns=lab.host)
