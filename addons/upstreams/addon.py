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

A ``ca_bundle`` vouches for its own entry's host only: ``tls_start_server`` gives that
host's connections a context trusting certifi's roots plus that bundle. Bundles used to
be merged into mitmproxy's global ``ssl_verify_upstream_trusted_ca``, so a private CA
declared for one internal host was trusted for every upstream (issue 18/12).

A pin works like an entry in /etc/hosts: the gateway's event loop resolves the pinned
name to the address (:class:`PinnedResolver`), and mitmproxy's connection keeps the
*name* as its address. It used to rewrite ``server.address`` in ``server_connect``
instead, but mitmproxy finds a reusable upstream connection by comparing that address
with the request's ``(host, port)``, so no connection to a pinned host was ever reused:
every request on a kept-alive agent connection opened a new one, and mitmproxy allows
five open connections per address and client connection, so the sixth request waited
for a free slot forever (issue 17). ``server_connected`` checks that the connection
really went to the pinned address and cuts it before anything is sent if not.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import certifi
from mitmproxy import ctx, exceptions, tls
from mitmproxy.addons import tlsconfig
from mitmproxy.net import tls as net_tls
from mitmproxy.proxy import server_hooks
from OpenSSL import SSL

from addons.core.normalize import normalize_host
from addons.core.options import Option, register_options
from addons.core.rulefile import Where
from addons.policy.conditions import Glob
from addons.policy.engine import LoadContext, Policy, top_level_field

log = logging.getLogger("portcullis.upstreams")


@dataclass(frozen=True)
class Upstream:
    host: Glob
    ca_bundle: Path | None
    verify: bool
    address: str | None = None


OPTIONS = (
    Option("portcullis_resolve", Sequence[str], [], "Pin an upstream host name to an address: HOST=IP.",
           flag="--resolve", metavar="HOST=IP"),
)

UPSTREAM_KEYS = ("host", "ca_bundle", "verify", "address")


@top_level_field("upstreams", type="list of {host, address, ca_bundle, verify}", see="rules.md#upstreams",
                 example="[{host: api.demo.test, address: 127.0.0.1}]",
                 summary="Per upstream host: an address to connect to, a CA bundle to trust, or verify: false.")
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
        try:
            mapping[normalize_host(host)] = str(ipaddress.ip_address(address.strip()))
        except ValueError:
            raise exceptions.OptionsError(
                f"portcullis_resolve: {address.strip()!r} in {entry!r} is not an IP address"
            ) from None
    return mapping


class PinnedResolver:
    """Answers the event loop's name lookups for pinned names with their address.

    Installed on the running loop (``loop.getaddrinfo`` is looked up on the loop object
    by ``asyncio.open_connection``, which mitmproxy uses to reach upstreams); every other
    name goes to the loop's own resolver unchanged.
    """

    def __init__(self, pinned_address: Callable[[str], str | None]) -> None:
        self.pinned_address = pinned_address
        self.loop: asyncio.AbstractEventLoop | None = None
        self._original: Callable[..., Any] | None = None

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.loop is loop:
            return
        self.uninstall()
        self.loop, self._original = loop, loop.getaddrinfo
        loop.getaddrinfo = self.getaddrinfo  # type: ignore[method-assign]

    def uninstall(self) -> None:
        if self.loop is not None and self.loop.getaddrinfo == self.getaddrinfo:
            self.loop.getaddrinfo = self._original  # type: ignore[method-assign]
        self.loop = self._original = None

    async def getaddrinfo(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        assert self._original is not None
        name = host.decode("idna") if isinstance(host, bytes) else host
        pinned = self.pinned_address(name) if isinstance(name, str) else None
        return await self._original(pinned or host, port, *args, **kwargs)


class UpstreamsAddon:
    name = "portcullis_upstreams"

    def __init__(self) -> None:
        self.resolve: dict[str, str] = {}  # from the command line; wins over the rules file
        self.pinned: dict[str, str] = {}  # from the rules file's upstreams[].address
        self.tls: list[Upstream] = []
        self.trust: dict[Path, str] = {}  # bundle -> its trust file (certifi + that bundle)
        self.resolver = PinnedResolver(self.pinned_address)

    def load(self, loader) -> None:
        register_options(loader, OPTIONS)

    def configure(self, updated: set[str]) -> None:
        if "portcullis_resolve" in updated:
            self.resolve = parse_resolve(ctx.options.portcullis_resolve)

    def policy_loaded(self, policy: Policy) -> None:
        """Called by the policy addon on every (re)load."""
        self.tls = policy.settings.get("upstreams", [])
        self.pinned = {u.host.pattern: u.address for u in self.tls if u.address}
        self.trust = {}

    def trust_file(self, bundle: Path) -> str:
        """certifi's roots plus this one bundle, as a file only its own host's connections load."""
        if bundle in self.trust:
            return self.trust[bundle]
        text = Path(bundle).read_text()
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        path = Path(ctx.options.confdir).expanduser() / f"portcullis-upstream-ca-{digest}.pem"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(Path(certifi.where()).read_text() + "\n" + text)
        self.trust[bundle] = str(path)
        return str(path)

    def scoped_context(self, tls_start: tls.TlsData, bundle: Path) -> SSL.Context:
        """The context mitmproxy's tlsconfig would build, trusting this host's bundle too.

        Same arguments as mitmproxy 11/12's ``TlsConfig.tls_start_server`` (the
        connection-level settings, SNI, host name check and ALPN, stay on the connection).
        """
        server = tls_start.conn
        min_version = net_tls.Version[ctx.options.tls_version_server_min]
        cipher_list = server.cipher_list or tlsconfig._default_ciphers(min_version)
        return net_tls.create_proxy_server_context(
            method=net_tls.Method.DTLS_CLIENT_METHOD if tls_start.is_dtls else net_tls.Method.TLS_CLIENT_METHOD,
            min_version=min_version,
            max_version=net_tls.Version[ctx.options.tls_version_server_max],
            cipher_list=tuple(cipher_list),
            ecdh_curve=ctx.options.tls_ecdh_curve_server,
            verify=net_tls.Verify.VERIFY_NONE if ctx.options.ssl_insecure else net_tls.Verify.VERIFY_PEER,
            ca_path=None,
            ca_pemfile=self.trust_file(bundle),
            client_cert=None,
            legacy_server_connect=ctx.options.ssl_insecure,
        )

    def pinned_address(self, host: str) -> str | None:
        """The address a host name is pinned to, if it is."""
        name = normalize_host(host)
        return self.resolve.get(name) or self.pinned.get(name)

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        # The address stays the name (see the module docstring); the lookup is pinned.
        if data.server.address is not None and self.pinned_address(data.server.address[0]):
            self.resolver.install(asyncio.get_running_loop())

    def server_connected(self, data: server_hooks.ServerConnectionHookData) -> None:
        if data.server.address is None or data.server.peername is None:
            return
        pinned = self.pinned_address(data.server.address[0])
        if pinned is None or ipaddress.ip_address(data.server.peername[0]) == ipaddress.ip_address(pinned):
            return
        # The pin did not take (a mitmproxy that no longer resolves through the event
        # loop): never talk to whatever the name resolved to instead.
        log.error("connection to pinned host %s went to %s instead of %s: cut",
                  data.server.address[0], data.server.peername[0], pinned)
        abort_transport(data.client.id, data.server)

    def done(self) -> None:
        self.resolver.uninstall()

    def tls_start_server(self, tls_start: tls.TlsData) -> None:
        host = tls_start.conn.sni or (tls_start.conn.address or ("",))[0]
        rule = next((u for u in self.tls if u.host.matches(normalize_host(str(host)))), None)
        if rule is None or (rule.verify and rule.ca_bundle is None):
            return
        if tls_start.ssl_conn is None:
            # We may run before mitmproxy's tlsconfig (e.g. under `mitmdump -s`): let it
            # build the connection now; it leaves an existing one alone afterwards.
            ctx.master.addons.get("tlsconfig").tls_start_server(tls_start)
        if tls_start.ssl_conn is None:
            return
        if rule.verify:
            # This host's own CA bundle, for this connection only (issue 18/12).
            tls_start.ssl_conn.set_context(self.scoped_context(tls_start, rule.ca_bundle))
            return
        log.debug("upstream TLS verification disabled for %s by rules", host)
        tls_start.ssl_conn.set_verify(SSL.VERIFY_NONE, None)


def abort_transport(client_id: str, server: Any) -> bool:
    """Drop a just-opened upstream connection before any byte is written to it.

    mitmproxy internals (the proxyserver's connection handlers), looked up defensively:
    returns False when they are not where mitmproxy 11 and 12 keep them.
    """
    proxyserver = ctx.master.addons.get("proxyserver")
    handler = getattr(proxyserver, "connections", {}).get(client_id)
    transport = getattr(handler, "transports", {}).get(server) if handler else None
    writer = getattr(transport, "writer", None)
    if writer is None or not hasattr(writer, "transport"):
        log.error("cannot cut the connection to %s: mitmproxy internals changed", server.address)
        return False
    writer.transport.abort()
    return True
