"""How the gateway reaches upstreams: fixed addresses and per-host TLS trust.

Rules file::

    upstreams:
      - host: "api.internal.example.com"
        ca_bundle: certs/internal-ca.pem   # trust this CA too (path relative to the rules file)
      - host: "*.test"
        verify: false                      # explicit opt-out, for test upstreams only
      - host: "api.demo.test"
        address: 127.0.0.1                 # connect here instead of resolving the name

Option ``portcullis_resolve`` (``--resolve HOST=IP`` on the command line) pins a host
name to an address, like curl's ``--resolve``: the agent and the rules keep seeing the
name, the connection goes to the address. Upstream certificates are verified by default.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import certifi
from mitmproxy import ctx, exceptions, tls
from mitmproxy.proxy import server_hooks
from OpenSSL import SSL

from addons.matching import Glob
from addons.normalize import normalize_host
from addons.rulefile import Where
from addons.ruleset import LoadContext, Policy, top_level_field

log = logging.getLogger("portcullis.upstreams")


@dataclass(frozen=True)
class Upstream:
    host: Glob
    ca_bundle: Path | None
    verify: bool
    address: str | None = None


UPSTREAM_KEYS = ("host", "ca_bundle", "verify", "address")


@top_level_field("upstreams")
def compile_upstreams(value: Any, where: Where, context: LoadContext) -> list[Upstream]:
    if not isinstance(value, list):
        where.fail("upstreams must be a list of {host, ca_bundle | verify}")
    result = []
    for i, item in enumerate(value):
        at = where / i
        at.mapping(item, UPSTREAM_KEYS, "host and ca_bundle, verify or address")
        host = item.get("host")
        if not isinstance(host, str) or not host:
            (at / "host").fail("host must be a non-empty host name or glob")
        verify = item.get("verify", True)
        if not isinstance(verify, bool):
            (at / "verify").fail("verify must be true or false")
        bundle = item.get("ca_bundle")
        path = None
        if bundle is not None:
            if not isinstance(bundle, str):
                (at / "ca_bundle").fail("ca_bundle must be a file path")
            path = (context.base_dir / bundle).resolve()
            if not path.is_file():
                (at / "ca_bundle").fail(f"CA bundle {path} does not exist")
        address = item.get("address")
        if address is not None:
            try:
                address = str(ipaddress.ip_address(address))
            except ValueError:
                (at / "address").fail(f"address must be an IP address, got {address!r}")
            if any(c in host for c in "*?"):
                (at / "address").fail("address needs a literal host, not a glob")
        glob = Glob(normalize_host(host), ignore_case=True)
        result.append(Upstream(glob, path, verify, address))
    return result


def parse_resolve(entries: Sequence[str]) -> dict[str, str]:
    mapping = {}
    for entry in entries:
        host, sep, address = entry.partition("=")
        if not sep or not host or not address:
            raise exceptions.OptionsError(f"portcullis_resolve: expected HOST=IP, got {entry!r}")
        mapping[normalize_host(host)] = address.strip()
    return mapping


class UpstreamsAddon:
    name = "portcullis_upstreams"

    def __init__(self) -> None:
        self.resolve: dict[str, str] = {}  # from the command line; wins over the rules file
        self.pinned: dict[str, str] = {}  # from the rules file's upstreams[].address
        self.tls: list[Upstream] = []

    def load(self, loader) -> None:
        loader.add_option(
            "portcullis_resolve", Sequence[str], [],
            "Pin upstream host names to addresses: HOST=IP (repeatable).",
        )

    def configure(self, updated: set[str]) -> None:
        if "portcullis_resolve" in updated:
            self.resolve = parse_resolve(ctx.options.portcullis_resolve)

    def policy_loaded(self, policy: Policy) -> None:
        """Called by the policy addon on every (re)load."""
        self.tls = policy.settings.get("upstreams", [])
        self.pinned = {u.host.pattern: u.address for u in self.tls if u.address}
        bundles = sorted({str(u.ca_bundle) for u in self.tls if u.ca_bundle})
        if not bundles:
            return
        combined = Path(ctx.options.confdir).expanduser() / "portcullis-upstream-ca.pem"
        combined.parent.mkdir(parents=True, exist_ok=True)
        parts = [Path(certifi.where()).read_text()] + [Path(b).read_text() for b in bundles]
        combined.write_text("\n".join(parts))
        if ctx.options.ssl_verify_upstream_trusted_ca != str(combined):
            ctx.options.update(ssl_verify_upstream_trusted_ca=str(combined))

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        if data.server.address is None:
            return
        host, port = data.server.address
        name = normalize_host(host)
        pinned = self.resolve.get(name) or self.pinned.get(name)
        if pinned:
            data.server.address = (pinned, port)
            data.server.sni = data.server.sni or host

    def tls_start_server(self, tls_start: tls.TlsData) -> None:
        host = tls_start.conn.sni or (tls_start.conn.address or ("",))[0]
        rule = next((u for u in self.tls if u.host.matches(normalize_host(str(host)))), None)
        if rule is None or rule.verify:
            return
        if tls_start.ssl_conn is None:
            # We may run before mitmproxy's tlsconfig (e.g. under `mitmdump -s`): let it
            # build the connection now; it leaves an existing one alone afterwards.
            ctx.master.addons.get("tlsconfig").tls_start_server(tls_start)
        if tls_start.ssl_conn is not None:
            log.debug("upstream TLS verification disabled for %s by rules", host)
            tls_start.ssl_conn.set_verify(SSL.VERIFY_NONE, None)
