"""`make demo`, the README's first command, shows what it says: its lab,
playbook, probes and the edit of our sets it repairs, all as expected."""

from lab import demo
from test_ansible import collections  # noqa: F401  pylint: disable=unused-import


def test_the_demo_shows_everything_as_expected(collections, monkeypatch, capsys):  # noqa: F811
    monkeypatch.setattr(demo, "COLLECTIONS", collections)
    assert demo.main() == 0
    shown = capsys.readouterr().out
    assert "\nall as expected" in shown and "in_force=False (set bridge s/" in shown
    assert "holds an element we did not put there)" in shown
