"""What the macro benchmark runs: the proxies it starts and the scenarios it measures.

A *proxy* is one long-lived process (bare mitmdump or a Portcullis gateway with a given
rules file and flags). A *scenario* is a proxy (or none: direct), a request mix, HTTP or
HTTPS, and the client counts to measure. Several scenarios share one proxy process, so
all proxies stay up for the whole run and the scenarios can be interleaved (A B A B).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench import rulegen
from bench.loadgen import Request

UPSTREAM_HOST = "127.0.0.1"

SMALL = (Request("GET", "/small"),)
JSON1K = (Request("GET", "/json1k"),)
JSON100K = (Request("GET", "/json100k"),)
SLOW = (Request("GET", "/slow"),)
#: Half allowed, half blocked by the `no-admin` rule.
MIX = (Request("GET", "/small"), Request("GET", "/admin/users"))


@dataclass(frozen=True)
class ProxySpec:
    name: str
    kind: str  # "mitmdump" or "portcullis"
    label: str
    rules: Callable[[], dict[str, Any]] | None = None
    #: Extra command-line arguments; "{dir}" is replaced by the run's scratch directory.
    args: tuple[str, ...] = ()
    requires: str | None = None  # a feature name from features()


@dataclass(frozen=True)
class Scenario:
    name: str
    label: str
    proxy: str | None  # a ProxySpec name; None = direct to the upstream
    requests: tuple[Request, ...] = SMALL
    tls: bool = False
    clients: tuple[int, ...] = (1, 16, 64)
    quick_clients: tuple[int, ...] = ()  # empty: not part of --quick
    #: Scenario to divide by in the "× bare" column (same requests through bare mitmdump).
    bare: str = "bare"
    direct: str = "direct"
    #: Returns an error message if a sample response shows the scenario is not doing
    #: what it claims (e.g. masks not applied); the scenario is then reported as invalid.
    check: Callable[[int, bytes], str | None] | None = None


def _masked(status: int, body: bytes) -> str | None:
    if status != 200:
        return f"expected 200, got {status}"
    try:
        first = json.loads(body)["records"][0]
    except (ValueError, KeyError, IndexError):
        return "response is not the upstream's JSON records"
    if "@example.com" in str(first.get("email")) or str(first.get("ssn", "")).startswith("078"):
        return "the masks were not applied (is the masking addon in make_addons()?)"
    return None


def _status(expected: int) -> Callable[[int, bytes], str | None]:
    return lambda status, body: None if status == expected else f"expected {expected}, got {status}: {body[:200]!r}"


def _portcullis_rules(count: int, masks: bool = False) -> Callable[[], dict[str, Any]]:
    return lambda: rulegen.policy(UPSTREAM_HOST, count, "same-host", masks=masks)


#: Every gateway starts from this: no recording, no review UI (several gateways run at
#: once); scenarios that measure a capability turn it on in their own args (last wins).
PORTCULLIS_BASE_ARGS = ("--db", "", "--ui", "off")

PROXIES = [
    ProxySpec("bare", "mitmdump", "mitmdump -q, no addons"),
    ProxySpec("p10", "portcullis", "Portcullis, 10 rules", _portcullis_rules(10)),
    ProxySpec("p10-rec", "portcullis", "Portcullis, 10 rules, recording to DuckDB",
              _portcullis_rules(10), ("--db", "{dir}/bench.duckdb"), requires="recording"),
    ProxySpec("p1000", "portcullis", "Portcullis, 1,000 rules", _portcullis_rules(1000)),
    ProxySpec("p10-mask", "portcullis", "Portcullis, 10 rules + 5 masks",
              _portcullis_rules(10, masks=True), requires="masking"),
]

SCENARIOS = [
    Scenario("direct", "direct to the upstream (load generator ceiling)", None, quick_clients=(1, 16)),
    Scenario("bare", "bare mitmdump", "bare", quick_clients=(1, 16), check=_status(200)),
    Scenario("portcullis-10", "Portcullis, 10 rules", "p10", quick_clients=(1, 16), check=_status(200)),
    Scenario("portcullis-10-rec", "Portcullis, 10 rules, recording", "p10-rec", quick_clients=(1, 16),
             check=_status(200)),
    Scenario("portcullis-1000", "Portcullis, 1,000 rules", "p1000", clients=(1, 16), quick_clients=(16,),
             check=_status(200)),
    Scenario("bare-mix", "bare mitmdump, mixed paths", "bare", MIX, clients=(16,)),
    Scenario("portcullis-mix", "Portcullis, half blocked", "p10", MIX, clients=(16,), bare="bare-mix",
             check=_status(200)),
    Scenario("bare-json1k", "bare mitmdump, 1 KiB JSON", "bare", JSON1K, clients=(1, 16)),
    Scenario("portcullis-json1k", "Portcullis, 10 rules, 1 KiB JSON", "p10", JSON1K, clients=(1, 16),
             quick_clients=(1,), bare="bare-json1k", check=_status(200)),
    Scenario("portcullis-mask1k", "Portcullis, 5 masks on 1 KiB JSON", "p10-mask", JSON1K, clients=(1, 16),
             quick_clients=(1,), bare="bare-json1k", check=_masked),
    Scenario("bare-json100k", "bare mitmdump, 100 KiB JSON", "bare", JSON100K, clients=(16,),
             direct="direct-json100k"),
    Scenario("direct-json100k", "direct, 100 KiB JSON", None, JSON100K, clients=(16,)),
    Scenario("portcullis-json100k", "Portcullis, 10 rules, 100 KiB JSON", "p10", JSON100K, clients=(1, 16),
             bare="bare-json100k", direct="direct-json100k", check=_status(200)),
    Scenario("portcullis-mask100k", "Portcullis, 5 masks on 100 KiB JSON", "p10-mask", JSON100K,
             clients=(1, 16), bare="bare-json100k", direct="direct-json100k", check=_masked),
    Scenario("bare-slow", "bare mitmdump, 50 ms upstream", "bare", SLOW, clients=(64,)),
    Scenario("portcullis-slow", "Portcullis, 50 ms upstream", "p10", SLOW, clients=(64,), bare="bare-slow",
             check=_status(200)),
    Scenario("direct-https", "direct HTTPS", None, tls=True, clients=(16,)),
    Scenario("bare-https", "bare mitmdump, HTTPS interception", "bare", tls=True, clients=(1, 16),
             quick_clients=(16,), direct="direct-https", check=_status(200)),
    Scenario("portcullis-https", "Portcullis, 10 rules, HTTPS interception", "p10", tls=True,
             clients=(1, 16), quick_clients=(16,), bare="bare-https", direct="direct-https",
             check=_status(200)),
]


def features() -> dict[str, bool]:
    """Which optional capabilities this checkout has (they land in separate issues)."""
    import addons.schema  # noqa: F401  (registers every package's rules keys)
    from addons.policy import engine as ruleset
    from gateway.settings import SETTINGS

    flags = {s.flag for s in SETTINGS}
    return {"recording": "--db" in flags, "masking": "mask" in ruleset.RULE_FIELDS}
