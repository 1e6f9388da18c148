"""Method override never turns an allowed request into a blocked one (issue 12, finding 2).

Against a real Express 4 app using the ``method-override`` middleware from npm, set up
the ways its README shows: the ``X-HTTP-Method-Override`` header (and the other common
header names), the ``_method`` query parameter, and ``_method`` in a form body. The
rules block ``DELETE /v1/tables/**``; a POST that Express would execute as DELETE must
be refused (400 ``method_override_refused``), not forwarded.
"""

from __future__ import annotations

import pytest
import requests

from tests.support.express import node_app
from tests.support.hardening import shared_gateway

RULES = """
    version: 1
    default: allow
    rules:
      - name: no-table-deletes
        match: {method: DELETE, path: "/v1/tables/**"}
        action: block
"""

APP_JS = r"""
const express = require('express');
const methodOverride = require('method-override');
const multer = require('multer');
const app = express();
app.use((req, res, next) => {
  console.log(JSON.stringify({seen: req.method, url: req.url}));
  next();
});
app.use(methodOverride('X-HTTP-Method-Override'));
app.use(methodOverride('X-HTTP-Method'));
app.use(methodOverride('X-Method-Override'));
app.use(methodOverride('_method'));
app.use(express.urlencoded({extended: false}));
app.use(multer().none());  // multipart text fields into req.body, as Rails and Laravel do
app.use(methodOverride((req) => {
  if (req.body && typeof req.body === 'object' && '_method' in req.body) {
    const method = req.body._method;
    delete req.body._method;
    return method;
  }
}));
let tables = new Set(['customers']);
app.get('/v1/tables', (req, res) => res.json([...tables]));
app.post('/v1/reset', (req, res) => { tables = new Set(['customers']); res.json({reset: true}); });
app.post('/v1/tables/:name', (req, res) => res.json({posted: req.params.name}));
app.delete('/v1/tables/:name', (req, res) => {
  console.log(JSON.stringify({deleted: req.params.name, originalMethod: req.originalMethod}));
  tables.delete(req.params.name);
  res.json({deleted: req.params.name});
});
app.listen(Number(process.env.PORT), '127.0.0.1');
"""

PACKAGES = ("express@4", "method-override@3", "multer@2")

OVERRIDES = {
    "X-HTTP-Method-Override header": {"headers": {"X-HTTP-Method-Override": "DELETE"}},
    "X-HTTP-Method header": {"headers": {"X-HTTP-Method": "DELETE"}},
    "X-Method-Override header": {"headers": {"X-Method-Override": "DELETE"}},
    "lower-case header": {"headers": {"x-http-method-override": "delete"}},
    "_method query": {"params": {"_method": "DELETE"}},
    "percent-encoded _method query": {"query": "%5Fmethod=DELETE"},
    "_method form body": {"data": {"name": "x", "_method": "DELETE"}},
    "_method multipart body": {"files": {"_method": (None, "DELETE")}},
}


@pytest.fixture(scope="module")
def express():
    with node_app(APP_JS, packages=PACKAGES) as app:
        yield app


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, confdir):
    with shared_gateway(tmp_path_factory.mktemp("override"), confdir, RULES) as gw:
        yield gw


@pytest.fixture(autouse=True)
def reset_tables(express):
    requests.post(express.url("/v1/reset"), timeout=10).raise_for_status()
    express.clear_log()


def send(base: str, how: dict, proxies: dict | None = None) -> requests.Response:
    url = base + "/v1/tables/customers" + (f"?{how['query']}" if "query" in how else "")
    kwargs = {k: v for k, v in how.items() if k != "query"}
    return requests.post(url, proxies=proxies, timeout=10, **kwargs)


def tables(express) -> list[str]:
    return requests.get(express.url("/v1/tables"), timeout=10).json()


@pytest.mark.parametrize("name", list(OVERRIDES))
def test_express_honours_the_override_without_the_gateway(express, name):
    # The control: this app really deletes the table for each of these requests, so the
    # refusals below are what stands between the agent and the DELETE.
    response = send(express.base_url, OVERRIDES[name])
    assert response.json() == {"deleted": "customers"}
    assert tables(express) == []


@pytest.mark.parametrize("name", list(OVERRIDES))
def test_override_is_refused_and_express_deletes_nothing(express, gateway, name):
    response = send(express.base_url, OVERRIDES[name], proxies={"http": gateway.proxy_url})
    assert tables(express) == ["customers"], f"Express deleted the table: {response.text}"
    assert not [line for line in express.json_logged() if line.get("url", "").startswith("/v1/tables/")]
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == "method_override_refused"
    assert body["reason"] and body["flow_id"]


def test_plain_requests_still_get_the_policy(express, gateway):
    proxies = {"http": gateway.proxy_url}
    response = requests.delete(express.url("/v1/tables/customers"), proxies=proxies, timeout=10)
    assert response.status_code == 403
    assert response.json()["error"] == "blocked_by_policy"
    response = requests.post(express.url("/v1/tables/customers"), data={"name": "method"},
                             params={"method": "x"}, proxies=proxies, timeout=10)
    assert response.json() == {"posted": "customers"}  # "method" alone is no override
    assert tables(express) == ["customers"]
