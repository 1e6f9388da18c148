"""Command-line settings of `portcullis run`, and how each maps onto a mitmproxy option.

The settings are declared once, as data, by the addons that read them (``OPTIONS`` in
each module of OPTION_MODULES, see addons.core.options): the addon registers them as
mitmproxy options in ``load()``, and this module turns the same declarations into the
flags of `portcullis run`, which pass their values to those options. So the same addon
works under `mitmdump -s` with `--set <option>=<value>`, and docs/cli.md is generated
from here (python -m gateway.docs). Only what `portcullis run` adds lives here: the
listen address, mitmproxy's own confdir, and where the shipped rules and recording are.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from addons.core.options import Option

PROJECT_ROOT = Path(__file__).resolve().parent.parent
#: Running from a clone (an editable install, or `python -m gateway` in the repository)
#: rather than from an installed wheel, whose PROJECT_ROOT is site-packages.
IN_SOURCE_TREE = (PROJECT_ROOT / "pyproject.toml").is_file()
#: The gateway's CA, keys and (installed) recording: one directory per user.
HOME_ENV = "PORTCULLIS_HOME"
DEFAULT_CONFDIR = Path(os.environ.get(HOME_ENV, "~/.portcullis")).expanduser()


def shipped_rules_dir() -> Path:
    """The rules that come with Portcullis: rules/ of a clone, else the wheel's copy
    (setup.py puts rules/ into the package as gateway/shipped_rules/)."""
    return PROJECT_ROOT / "rules" if IN_SOURCE_TREE else Path(__file__).resolve().parent / "shipped_rules"


DEFAULT_RULES = shipped_rules_dir() / "default.yaml"
#: A clone records into its recordings/ directory (git-ignored), as the README says; an
#: installed gateway beside its CA and keys, never into site-packages; with
#: $PORTCULLIS_HOME set, there in either case (the operator chose where state goes).
DEFAULT_DATA = PROJECT_ROOT / "recordings" if IN_SOURCE_TREE and HOME_ENV not in os.environ else DEFAULT_CONFDIR
DEFAULT_DB = DEFAULT_DATA / "portcullis.duckdb"
#: With neither --db nor --lake, `portcullis run` records into this local lake (SQLite
#: catalog, Parquet files; recordings/lake.py): unlike a DuckDB file, which one process
#: locks, an analyst's own DuckDB attaches it read-only while the gateway writes. --db
#: (DEFAULT_DB) then only places the journal and the analyst socket; an explicit
#: ``--db FILE`` records into that one DuckDB file, as before.
DEFAULT_LAKE = DEFAULT_DATA / "portcullis.lake"
DEFAULT_LISTEN = "127.0.0.1:8080"
CA_CERT_NAME = "mitmproxy-ca-cert.pem"


#: Modules whose ``OPTIONS`` are the settings, in the order `portcullis run --help` lists them.
OPTION_MODULES = [
    "addons.policy.addon", "addons.identity.addon", "addons.upstreams.addon", "addons.recorder.addon",
    "review_ui.server_addon", "addons.masking.addon", "addons.upstreams.errors",
    "addons.guards.clienttimeouts", "addons.holds.pgaddon",
]

#: Where `portcullis run` differs from the option's own default (which is what `mitmdump -s` gets).
RUN_DEFAULTS: dict[str, Any] = {
    "portcullis_rules": str(DEFAULT_RULES),
    "portcullis_db": str(DEFAULT_DB),
}


#: What `portcullis run` adds to an option's help (its default differs from mitmdump's).
RUN_NOTES: dict[str, str] = {
    "portcullis_db": "With neither --db nor --lake, the recording is the local lake `portcullis.lake` "
                     "beside this path, which analysts attach live; an explicit --db records into this file.",
    "portcullis_lake": "Default of `portcullis run` with neither flag: `portcullis.lake` beside the "
                       "default --db (docs/recording.md, \"Live queries from your own DuckDB\").",
}


@dataclass(frozen=True)
class Setting:
    flag: str
    option: str | None  # the mitmproxy option it sets; None when the CLI handles it itself
    help: str
    default: Any = None
    type: Callable[[str], Any] = str
    repeat: bool = False
    convert: Callable[[Any], Any] = lambda value: value
    metavar: str | None = None


def parse_hostport(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return (host.strip("[]") or "127.0.0.1"), int(port)


def _absolute(value: str) -> str:
    return str(Path(value).resolve())


def _absolute_or_off(value: str) -> str:
    return str(Path(value).resolve()) if value else ""


def declared_options() -> list[Option]:
    """Every option an addon declares, from OPTION_MODULES."""
    return [option for module in OPTION_MODULES for option in importlib.import_module(module).OPTIONS]


def setting_for(option: Option) -> Setting:
    """The `portcullis run` flag of a declared option."""
    assert option.flag is not None
    default = RUN_DEFAULTS.get(option.name, option.default)
    convert = (_absolute_or_off if option.empty_is_off else _absolute) if option.path else (lambda value: value)
    note = RUN_NOTES.get(option.name)
    return Setting(
        option.flag, option.name, f"{option.help} {note}" if note else option.help,
        # An empty default means "not given": the addon's own option default applies.
        default=None if default == "" else default,
        type=option.parse or (option.type if option.type in (int, float) else str),
        repeat=option.repeat,
        convert=convert,
        metavar=option.metavar or _metavar(option),
    )


def _metavar(option: Option) -> str:
    if option.choices:
        return "|".join(option.choices)
    if option.path:
        return "FILE"
    return {int: "N", float: "SECONDS"}.get(option.type, "VALUE")


@functools.cache
def all_settings() -> tuple[Setting, ...]:
    """Every `portcullis run` flag (also as ``settings.SETTINGS``). Built on first use:
    it imports the addon modules, and with them mitmproxy (about 0.7 s of CPU), which
    `portcullis check`, `env`, `sql` and the other commands never need."""
    return (
        Setting("--listen", None, "Proxy address HOST:PORT.", DEFAULT_LISTEN, type=parse_hostport,
                metavar="HOST:PORT"),
        Setting("--confdir", "confdir", "Directory of the gateway's CA and keys (mitmproxy's confdir).",
                str(DEFAULT_CONFDIR), convert=lambda v: str(Path(v).expanduser().resolve()), metavar="DIR"),
        *(setting_for(option) for option in declared_options() if option.flag),
    )


def __getattr__(name: str) -> Any:
    if name == "SETTINGS":
        return all_settings()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def option_for_flag(flag: str) -> str | None:
    """The mitmproxy option a `portcullis run` flag sets (None: the CLI's own, or no such flag)."""
    return next((s.option for s in all_settings() if s.flag == flag), None)


class Given(argparse.Action):
    """``store``, and the flag's dest noted in ``args.given_flags``: whether a flag was given
    at all, which its default cannot tell (``--db`` with the default path is still explicit)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)
        namespace.given_flags = {*getattr(namespace, "given_flags", ()), self.dest}


def given(args: argparse.Namespace, dest: str) -> bool:
    """Whether the flag with this dest was on the command line."""
    return dest in getattr(args, "given_flags", ())


def default_recording(args: argparse.Namespace) -> bool:
    """No recording flag: record into DEFAULT_LAKE (see there)."""
    return not given(args, "db") and not given(args, "lake") and not getattr(args, "lake", None)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for setting in all_settings():
        parser.add_argument(
            setting.flag,
            type=setting.type,
            default=setting.default,
            action="append" if setting.repeat else Given,
            metavar=setting.metavar,
            help=f"{setting.help} (default: {setting.default})" if setting.default not in (None, []) else setting.help,
        )


def mitmproxy_options(args: argparse.Namespace) -> dict[str, Any]:
    """The mitmproxy option values for parsed `portcullis run` arguments."""
    values: dict[str, Any] = {}
    for setting in all_settings():
        if setting.option is None:
            continue
        value = getattr(args, setting.flag.lstrip("-").replace("-", "_"))
        if setting.repeat and value is None:
            value = []
        if value is None:
            continue  # not given: the addon's own option default applies
        values[setting.option] = setting.convert(value)
    if default_recording(args) and values.get("portcullis_db"):
        values["portcullis_lake"] = str(DEFAULT_LAKE)
    return values


def ca_cert_path(confdir: str | Path) -> Path:
    return Path(confdir).expanduser() / CA_CERT_NAME
