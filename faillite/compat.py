"""What Python 3.11 added that the project uses, for Python 3.10 (JetPack 6's system Python)."""

from __future__ import annotations

import sys
from enum import Enum

if sys.version_info >= (3, 11):
    from enum import StrEnum  # novermin (guarded: 3.11+)
else:

    class StrEnum(str, Enum):
        """Members are their value as strings: ``str()``, ``format()`` and f-strings give it."""

        def __str__(self) -> str:
            return str(self.value)

        def __format__(self, spec: str) -> str:
            return str(self.value).__format__(spec)


__all__ = ["StrEnum", "python_code", "python_module"]


# ``python -P``: the working folder is not put on sys.path, so a child started from a checkout's
# root runs what is installed, never the checkout's folders of the same names. Python 3.10 has
# no -P: the child drops that first entry itself before anything is imported.
_DROP_CWD = "import sys; sys.path.pop(0); "


def python_module(module: str) -> list[str]:
    """The argv start of ``python -P -m module`` (arguments follow)."""
    if sys.version_info >= (3, 11):
        return [sys.executable, "-P", "-m", module]
    run = f"import runpy; runpy.run_module({module!r}, run_name='__main__', alter_sys=True)"
    return [sys.executable, "-c", _DROP_CWD + run]


def python_code(code: str, *flags: str) -> list[str]:
    """The argv of ``python -P [flags] -c code``."""
    if sys.version_info >= (3, 11):
        return [sys.executable, "-P", *flags, "-c", code]
    return [sys.executable, *flags, "-c", _DROP_CWD + "\n" + code]
