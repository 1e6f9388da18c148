"""The environment an agent needs to use the gateway: proxy variables and CA trust."""

from __future__ import annotations

import shlex
from pathlib import Path

from mitmproxy import certs

from gateway.settings import ca_cert_path

#: Variables that make common HTTP clients trust the gateway's CA.
CA_VARIABLES = ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS")


def ensure_ca(confdir: str | Path) -> Path:
    """Create the gateway's CA in confdir if it does not exist yet; return the cert path."""
    confdir = Path(confdir).expanduser()
    confdir.mkdir(parents=True, exist_ok=True)
    certs.CertStore.from_store(confdir, "mitmproxy", 2048)
    return ca_cert_path(confdir)


def agent_environment(
    proxy_host: str,
    proxy_port: int,
    ca_cert: Path,
    ui_address: str | None = None,
    credentials: tuple[str, str] | None = None,
) -> dict[str, str]:
    """Proxy and CA variables, upper- and lower-case (curl reads only lower-case http_proxy)."""
    auth = f"{credentials[0]}:{credentials[1]}@" if credentials else ""
    proxy = f"http://{auth}{proxy_host}:{proxy_port}"
    env = {"HTTP_PROXY": proxy, "HTTPS_PROXY": proxy, "http_proxy": proxy, "https_proxy": proxy}
    if ui_address:
        env["NO_PROXY"] = env["no_proxy"] = ui_address
    for name in CA_VARIABLES:
        env[name] = str(ca_cert)
    return env


def shell_exports(env: dict[str, str]) -> str:
    return "\n".join(f"export {name}={shlex.quote(value)}" for name, value in env.items())
