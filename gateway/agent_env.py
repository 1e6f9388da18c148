"""The environment an agent needs to use the gateway: proxy variables and CA trust.

Each variable is here because a common client reads it (README, "Clients tested through
the gateway"; tests/test_clients_*.py back each row):

  HTTP_PROXY / HTTPS_PROXY     requests, httpx (and the openai, anthropic and mcp SDKs on
                               it), urllib, aiohttp with trust_env=True, websockets, Go,
                               undici's EnvHttpProxyAgent (Node)
  http_proxy / https_proxy     curl reads only the lower-case http_proxy (a CGI header
                               could set HTTP_PROXY), and many tools read lower case first
  WSS_PROXY / WS_PROXY         aiohttp (trust_env=True) looks up ws:// and wss:// URLs
                               under their own scheme's variable, not HTTPS_PROXY
  NODE_USE_ENV_PROXY=1         Node 24+: the built-in fetch and http(s) modules use the
                               proxy variables (Node 20 and 22 ignore it: see CLIENT_NOTES)
  NO_PROXY / no_proxy          the review UI, which agents must not reach through the proxy
  REQUESTS_CA_BUNDLE           requests (its own certifi bundle otherwise)
  SSL_CERT_FILE                OpenSSL's default: httpx, urllib, aiohttp, websockets, Go
  CURL_CA_BUNDLE               curl
  NODE_EXTRA_CA_CERTS          Node (added to its built-in roots)
  AWS_CA_BUNDLE                boto3 / botocore (certifi otherwise)

What no variable can do is in CLIENT_NOTES, printed by `portcullis env` as comments.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from mitmproxy import certs

from gateway.settings import ca_cert_path

#: mitmproxy's name for its CA files in confdir (tlsconfig.CONF_BASENAME).
CA_BASENAME = "mitmproxy"
#: Variables that make common HTTP clients trust the gateway's CA.
CA_VARIABLES = ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS", "AWS_CA_BUNDLE")
#: Variables that carry the proxy URL.
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "WSS_PROXY", "WS_PROXY")

#: What a client needs that the environment cannot give it (shell comments of `portcullis env`).
CLIENT_NOTES = (
    "aiohttp ignores these variables unless the session asks: aiohttp.ClientSession(trust_env=True)",
    "Node 20/22: fetch() ignores proxy variables; with undici: "
    "setGlobalDispatcher(new EnvHttpProxyAgent()) (npm install undici); Node 24+: NODE_USE_ENV_PROXY=1 below",
    "Python clients that bundle certifi and ignore SSL_CERT_FILE: pass verify=$SSL_CERT_FILE",
)


def ensure_ca(confdir: str | Path) -> Path:
    """Create the gateway's CA in confdir if it does not exist yet; return the cert path.

    An existing CA is not loaded here: mitmproxy loads it when the gateway starts (and
    fails there on a broken one), and each load costs 30 ms of RSA key checks."""
    confdir = Path(confdir).expanduser()
    confdir.mkdir(parents=True, exist_ok=True)
    if not (confdir / f"{CA_BASENAME}-ca.pem").exists():  # what CertStore.from_store looks for
        certs.CertStore.create_store(confdir, CA_BASENAME, 2048)
    return ca_cert_path(confdir)


def agent_environment(
    proxy_host: str,
    proxy_port: int,
    ca_cert: Path,
    ui_address: str | None = None,
    credentials: tuple[str, str] | None = None,
) -> dict[str, str]:
    """Proxy and CA variables for every client in the module docstring."""
    auth = f"{credentials[0]}:{credentials[1]}@" if credentials else ""
    host = f"[{proxy_host}]" if ":" in proxy_host else proxy_host
    proxy = f"http://{auth}{host}:{proxy_port}"
    env = {name: proxy for name in PROXY_VARIABLES}
    env["NODE_USE_ENV_PROXY"] = "1"
    if ui_address:
        env["NO_PROXY"] = env["no_proxy"] = ui_address
    for name in CA_VARIABLES:
        env[name] = str(ca_cert)
    return env


def shell_exports(env: dict[str, str]) -> str:
    return "\n".join(f"export {name}={shlex.quote(value)}" for name, value in env.items())


def client_notes() -> str:
    """CLIENT_NOTES as shell comments (harmless under eval)."""
    return "\n".join(f"# {note}" for note in CLIENT_NOTES)
