"""Command-line settings of `portcullis run`, and how each maps onto a mitmproxy option.

Capabilities add their own entries to SETTINGS; `portcullis run` turns each into a flag
and passes the value to the addon option, so the same addon works under `mitmdump -s`
with `--set <option>=<value>`.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
#: Running from a clone (an editable install, or `python -m gateway` in the repository)
#: rather than from an installed wheel, whose PROJECT_ROOT is site-packages.
IN_SOURCE_TREE = (PROJECT_ROOT / "pyproject.toml").is_file()
#: The gateway's CA, keys and (installed) recording: one directory per user.
DEFAULT_CONFDIR = Path(os.environ.get("PORTCULLIS_HOME", "~/.portcullis")).expanduser()


def shipped_rules_dir() -> Path:
    """The rules that come with Portcullis: rules/ of a clone, else the wheel's copy
    (setup.py puts rules/ into the package as gateway/shipped_rules/)."""
    return PROJECT_ROOT / "rules" if IN_SOURCE_TREE else Path(__file__).resolve().parent / "shipped_rules"


DEFAULT_RULES = shipped_rules_dir() / "default.yaml"
#: A clone records into its recordings/ directory (git-ignored), as the README says; an
#: installed gateway beside its CA and keys, never into site-packages.
DEFAULT_DB = (PROJECT_ROOT / "recordings" if IN_SOURCE_TREE else DEFAULT_CONFDIR) / "portcullis.duckdb"
DEFAULT_LISTEN = "127.0.0.1:8080"
CA_CERT_NAME = "mitmproxy-ca-cert.pem"


@dataclass(frozen=True)
class Setting:
    flag: str
    option: str | None  # the mitmproxy option it sets; None when the CLI handles it itself
    help: str
    default: Any = None
    type: Callable[[str], Any] = str
    repeat: bool = False
    convert: Callable[[Any], Any] = lambda value: value


def parse_hostport(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return (host.strip("[]") or "127.0.0.1"), int(port)


SETTINGS: list[Setting] = [
    Setting("--rules", "portcullis_rules", "YAML rules file", str(DEFAULT_RULES),
            convert=lambda v: str(Path(v).resolve())),
    Setting("--listen", None, "proxy address HOST:PORT", DEFAULT_LISTEN, type=parse_hostport),
    Setting("--confdir", "confdir", "directory of the gateway's CA and keys", str(DEFAULT_CONFDIR),
            convert=lambda v: str(Path(v).expanduser().resolve())),
    Setting("--identities", "portcullis_identities", "YAML file of agent identities (identities:/jwt:)",
            convert=lambda v: str(Path(v).resolve())),
    Setting("--resolve", "portcullis_resolve", "pin an upstream host to an address: HOST=IP",
            [], repeat=True),
    Setting("--db", "portcullis_db", "DuckDB file recording every flow ('' = off)",
            str(DEFAULT_DB), convert=lambda v: str(Path(v).resolve()) if v else ""),
    Setting("--max-body-record", "portcullis_max_body_record",
            "bytes of each body to record (longer bodies are cut and flagged)", 1024 * 1024, type=int),
    Setting("--retain-days", "portcullis_retain_days",
            "delete recorded flows older than N days, on start and daily (0 = keep)", 0, type=int),
    Setting("--on-record-failure", "portcullis_on_record_failure",
            "when the recording cannot be written: block (JSON 503) or allow", "block"),
    Setting("--db-memory-limit", "portcullis_db_memory_limit",
            "memory the recording database may use (DuckDB memory_limit), e.g. 512MB", "512MB"),
    Setting("--db-threads", "portcullis_db_threads", "DuckDB worker threads for the recording", 1, type=int),
    Setting("--sql-timeout", "portcullis_sql_timeout",
            "seconds an analyst's query (SQL page, portcullis sql) may run", 30.0, type=float),
    Setting("--ui", "portcullis_ui", "review UI address HOST:PORT, or off", "127.0.0.1:8081"),
    Setting("--max-mask-body", "portcullis_max_mask_body",
            "largest body (decoded) buffered for masking, e.g. 512k or 10m", "10m"),
    Setting("--reviewers", "portcullis_reviewers", "reviewers file (portcullis reviewer add)",
            convert=lambda v: str(Path(v).resolve())),
    Setting("--upstream-timeout", "portcullis_upstream_timeout",
            "seconds an upstream has for a complete response (0 = no limit)", 60.0, type=float),
    Setting("--header-timeout", "portcullis_header_timeout",
            "seconds an agent connection has to send complete request headers (0 = no limit)",
            30.0, type=float),
    Setting("--idle-timeout", "portcullis_idle_timeout",
            "seconds an idle agent keep-alive connection stays open (0 = no limit)", 60.0, type=float),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for setting in SETTINGS:
        parser.add_argument(
            setting.flag,
            type=setting.type,
            default=setting.default,
            action="append" if setting.repeat else "store",
            help=f"{setting.help} (default: {setting.default})" if setting.default not in (None, []) else setting.help,
        )


def mitmproxy_options(args: argparse.Namespace) -> dict[str, Any]:
    """The mitmproxy option values for parsed `portcullis run` arguments."""
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        if setting.option is None:
            continue
        value = getattr(args, setting.flag.lstrip("-").replace("-", "_"))
        if setting.repeat and value is None:
            value = []
        if value is None:
            continue  # not given: the addon's own option default applies
        values[setting.option] = setting.convert(value)
    return values


def ca_cert_path(confdir: str | Path) -> Path:
    return Path(confdir).expanduser() / CA_CERT_NAME
