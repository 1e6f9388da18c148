"""The gateway's settings, declared once as data: mitmproxy option, CLI flag, default, help.

Each addon module declares the options it reads as a tuple of :class:`Option` and
registers them in ``load()`` with :func:`register_options`; ``gateway/settings.py`` turns
the same tuples into the flags of ``portcullis run``, and ``python -m gateway.docs``
into docs/cli.md. So a setting is written in one place, and
``mitmdump -s addons/portcullis.py --set portcullis_rules=...`` keeps working: the
mitmproxy option is what the addon reads, the flag only sets it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Option:
    """One setting. ``type`` and ``default`` are the mitmproxy option's (what ``mitmdump
    -s`` gets); ``flag`` is the ``portcullis run`` flag, or None for mitmproxy only;
    ``run_default`` the flag's default where ``portcullis run`` differs (the shipped rules
    file, the recording under recordings/), None meaning "not given: the option's default".
    A ``path`` option is passed to mitmproxy as an absolute path (``''`` stays off)."""

    name: str
    type: Any
    default: Any
    help: str
    flag: str | None = None
    path: bool = False
    empty_is_off: bool = False
    choices: tuple[str, ...] | None = None
    parse: Callable[[str], Any] | None = None  # the flag's argparse type; default from `type`
    metavar: str | None = None  # the flag's value in --help and docs/cli.md; default from `type`

    @property
    def repeat(self) -> bool:
        """A list option: the flag may be given several times."""
        return isinstance(self.default, list)


def register_options(loader: Any, options: Iterable[Option]) -> None:
    """Add each option to mitmproxy (an addon's ``load(loader)``)."""
    for option in options:
        if option.choices:
            loader.add_option(option.name, option.type, option.default, option.help, choices=option.choices)
        else:
            loader.add_option(option.name, option.type, option.default, option.help)
