"""The README's Node row: Node 20 through the gateway with undici's EnvHttpProxyAgent,
configured only by the environment `portcullis env` prints (NODE_EXTRA_CA_CERTS for the
gateway's CA). One real gateway for the module; undici comes from npm, cached.

Also shown, because `portcullis env` says so: Node 20's built-in fetch() without the agent
ignores the proxy variables (NODE_USE_ENV_PROXY=1 included, which only Node 24+ reads) and
goes straight to the upstream.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.agent_env import agent_environment
from tests.support import certs
from tests.support.gateway import GatewayProcess
from tests.support.module_servers import fresh_upstreams, module_tls_upstream, module_upstream  # noqa: F401
from tests.support.node_clients import node_major, run_node
from tests.support.upstream import UpstreamServer

RULES = """\
version: 1
default: allow
upstreams:
  - host: 127.0.0.1
    ca_bundle: {ca}
rules:
  - name: no-admin
    match: {{path: "/admin/**"}}
    action: block
"""

#: The two lines the README shows, then the client's own code.
ENV_PROXY_AGENT = """
const { EnvHttpProxyAgent, setGlobalDispatcher } = require('undici');
setGlobalDispatcher(new EnvHttpProxyAgent());   // HTTP_PROXY, HTTPS_PROXY, NO_PROXY

(async () => {
  const out = [];
  for (const url of process.argv.slice(2)) {
    const r = await fetch(url);   // Node's built-in fetch, now through the gateway
    out.push({status: r.status, decision: r.headers.get('x-portcullis-decision'), body: await r.text()});
  }
  console.log(JSON.stringify(out));
})().catch((e) => { console.log(JSON.stringify({error: String(e), cause: String(e.cause)})); process.exit(1); });
"""

PLAIN_FETCH = """
(async () => {
  const r = await fetch(process.argv[2]);
  console.log(JSON.stringify({status: r.status, decision: r.headers.get('x-portcullis-decision')}));
})();
"""


@pytest.fixture(scope="module")
def gateway(module_gateway: Any, pki: certs.TestPki) -> GatewayProcess:
    return module_gateway(RULES.format(ca=pki.ca_cert), "--db", "", "--ui", "off")


@pytest.fixture
def agent(gateway: GatewayProcess) -> dict[str, str]:
    return agent_environment("127.0.0.1", gateway.port, gateway.ca_cert)


def test_node_fetch_with_undici_env_http_proxy_agent(agent: dict, upstream: UpstreamServer,
                                                     tls_upstream: UpstreamServer) -> None:
    plain, secure, blocked = run_node(ENV_PROXY_AGENT, agent, upstream.url("/n/plain"), tls_upstream.url("/n/tls"),
                                      upstream.url("/admin/users"))
    assert (plain["status"], plain["decision"]) == (200, "allowed")
    assert (secure["status"], secure["decision"]) == (200, "allowed")  # NODE_EXTRA_CA_CERTS
    assert [r.path for r in upstream.received] == ["/n/plain"]
    assert [r.path for r in tls_upstream.received] == ["/n/tls"]
    assert blocked["status"] == 403
    assert json.loads(blocked["body"])["rule"] == "no-admin"


def test_node_20_fetch_without_the_agent_ignores_the_proxy(agent: dict, upstream: UpstreamServer) -> None:
    if node_major() >= 24:
        pytest.skip("Node 24+ reads NODE_USE_ENV_PROXY=1: fetch() uses the proxy there")
    direct = run_node(PLAIN_FETCH, agent, upstream.url("/n/direct"))
    assert direct == {"status": 200, "decision": None}
