"""Stores as earlier releases wrote them, made from one this release wrote."""

import json
import shutil

from engine.store import Store


def to_index_json(root, version):
    """Rewrite the store at ``root`` (a pathlib.Path) with its index as
    versions 2 to 5 kept it, one file index.json, and stamp ``version``."""
    index = Store(str(root)).index().all()
    (root / "index.json").write_text(json.dumps(index))
    shutil.rmtree(root / "index")
    (root / "version").write_text(f"{version}\n")
    return index
