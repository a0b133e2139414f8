"""The store's format version: an unversioned store (every store before the
file existed) is version 1 and gets the file on its next change; a newer one
is refused clearly, for reading and for changing; check mode creates nothing."""

import os
import re

import pytest

from engine.errors import NwfilterError
from engine.store import STORE_VERSION, Store
from engine.model import Binding, FilterRef
from engine.xml_form import binding_to_xml


@pytest.fixture
def unversioned(tmp_path):
    """A store as the release before the version file wrote it."""
    root = tmp_path / "store"
    for name in ("filters", "bindings", "learned"):
        (root / name).mkdir(parents=True)
    (root / "bindings" / "vnet0.xml").write_text(binding_to_xml(Binding("vnet0", "52:54:00:00:00:01",
                                                                        FilterRef("clean-traffic"))))
    (root / ".lock").write_text("")
    return root


def test_unversioned_store_is_version_1_and_stamped_on_change(unversioned):
    store = Store(str(unversioned))
    assert list(store.bindings()) == ["vnet0"] and not (unversioned / "version").exists()
    with store.locked(create=False):  # check mode: read, but write nothing
        pass
    assert not (unversioned / "version").exists()
    with store.locked():
        pass
    assert (unversioned / "version").read_text() == f"{STORE_VERSION}\n" == "1\n"
    assert list(store.bindings()) == ["vnet0"]


@pytest.mark.parametrize("text,words", [("2\n", "format version 2 is newer than this copy of vmguard.nwfilter reads (1)"),
                                        ("two", "unreadable format version 'two'")])
def test_newer_or_unreadable_store_is_refused(unversioned, text, words):
    (unversioned / "version").write_text(text)
    store = Store(str(unversioned))
    for read in (store.bindings, store.filters, store.learned, store.ports):
        with pytest.raises(NwfilterError, match=re.escape(f"store {unversioned}: {words}")):
            read()
    with pytest.raises(NwfilterError, match=re.escape(words)):
        with store.locked():
            pass
    assert (unversioned / "version").read_text() == text


def test_check_mode_creates_nothing_on_a_fresh_root(tmp_path):
    store = Store(str(tmp_path / "fresh"))
    with store.locked(create=False):
        assert store.bindings() == {} and store.ports() == {}
    assert not os.path.exists(tmp_path / "fresh")
