# -*- coding: utf-8 -*-
# Copyright: vmguard developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one exception type the engine raises for anything a user got wrong."""

from __future__ import annotations


class NwfilterError(Exception):
    """Bad input, an unresolvable filter tree or a refused change.

    The message is always one line that names what is wrong and where, so that
    a module can pass it to ``fail_json`` and a daemon can log it as is.
    """

    def __init__(self, message: str, where: str = "") -> None:
        text = f"{where}: {message}" if where else message
        super().__init__(" ".join(text.split()))

    @property
    def message(self) -> str:
        return str(self)

    def within(self, where: str) -> "NwfilterError":
        """The same error, prefixed with an outer location."""
        return NwfilterError(str(self), where)
