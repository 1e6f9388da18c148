"""sql: and graphql: rules through a real gateway process and a real upstream on 127.0.0.1,
with a real client through the proxy: what reaches the upstream, what the agent is told,
and what the recording says (the `classified` events and the sql_statements view).

The classifier's full statement tables run in process (tests/test_sql_classify.py);
here a cross-section of them proves the same answers hold end to end.
"""

from __future__ import annotations

import json
import textwrap

import duckdb
import pytest
import requests

from addons.core.rulefile import RuleFileError
from addons.policy.engine import load_policy
from tests.support.hardening import shared_gateway
from tests.support.module_servers import module_upstream  # noqa: F401
from tests.support.upstream import Canned

RULES = """
    version: 1
    default: block
    rules:
      - name: reads
        match:
          path: /api/v2/statements
          sql: {dialect: snowflake, statement: {only: [select]}}
        action: allow
      - name: unbounded-writes
        match:
          path: /api/v2/statements
          sql: {dialect: snowflake, statement: [update, delete], where: missing}
        action: block
        reason: "UPDATE/DELETE without WHERE"
      - name: writes
        match:
          path: /api/v2/statements
          sql: {dialect: snowflake, statement: [insert, update, delete, merge]}
        action: allow
      - name: ddl-and-unknown
        match:
          path: /api/v2/statements
          sql: {dialect: snowflake, statement: [create, alter, drop, truncate, grant, revoke, unknown]}
        action: block
        reason: "DDL and unclassifiable SQL are blocked"
      - name: mcp-reads
        match:
          path: /mcp
          sql: {dialect: postgres, statement: {only: [select]}, functions: {only: x}}
        action: allow
      - name: graphql-queries
        match:
          path: /graphql
          graphql: {operation: query, batch: all}
        action: allow
      - name: graphql-deletes
        match:
          path: /graphql
          graphql: {operation: mutation, fields: ["delete*"]}
        action: block
        reason: "no deletes over GraphQL"
"""
# The mcp-reads rule above is invalid on purpose in one test; the module uses RULES_OK.
RULES_OK = RULES.replace(", functions: {only: x}", "")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, confdir):
    with shared_gateway(tmp_path_factory.mktemp("querylang"), confdir, RULES_OK) as gw:
        yield gw


@pytest.fixture
def post(gateway, upstream):
    upstream.received.clear()
    upstream.routes["/api/v2/statements"] = lambda seen: Canned(200, {"data": []})
    upstream.routes["/graphql"] = lambda seen: Canned(200, {"data": {}})
    upstream.routes["/mcp"] = lambda seen: Canned(200, {"result": {}})
    proxies = {"http": gateway.proxy_url}

    def send(path: str, body, **kwargs):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return requests.post(upstream.url(path), data=data, proxies=proxies, timeout=30,
                             headers={"Content-Type": "application/json"}, **kwargs)

    return send


def reached(upstream, text: str) -> bool:
    return any(text.encode() in r.body for r in upstream.received)


SNOWFLAKE = [
    ("SELECT * FROM db.sch.customers LIMIT 10", 200, "reads"),
    ("select count(*) from customers -- DROP TABLE customers", 200, "reads"),
    ("SELECT 'DROP TABLE customers; ' AS note", 200, "reads"),
    ("INSERT INTO orders VALUES (1)", 200, "writes"),
    ("DELETE FROM orders WHERE id = 7", 200, "writes"),
    ("DELETE FROM public.customers", 403, "unbounded-writes"),
    ("UPDATE customers SET vip = TRUE", 403, "unbounded-writes"),
    ("DROP TABLE customers", 403, "ddl-and-unknown"),
    ('DROP TABLE "CUSTOMERS"', 403, "ddl-and-unknown"),
    ("/* harmless */ drop /* really */ table customers", 403, "ddl-and-unknown"),
    ("SELECT 1; DROP TABLE customers", 403, "ddl-and-unknown"),
    ("/*!50000DROP*/ TABLE customers", 403, "ddl-and-unknown"),
    ("WITH x AS (SELECT 1) SELECT * FROM x; TRUNCATE TABLE customers", 403, "ddl-and-unknown"),
    ("this is not sql at all", 403, "ddl-and-unknown"),
    ("GRANT ALL ON customers TO ROLE public", 403, "ddl-and-unknown"),
]


@pytest.mark.parametrize(("statement", "status", "rule"), SNOWFLAKE, ids=[s[0][:40] for s in SNOWFLAKE])
def test_snowflake_statements(post, upstream, statement, status, rule):
    body = {"statement": statement, "parameters": {"MULTI_STATEMENT_COUNT": "0"}}
    response = post("/api/v2/statements", body)
    assert response.status_code == status, response.text
    if status == 403:
        assert response.json()["error"] == "blocked_by_policy"
        assert response.json()["rule"] == rule
        assert not reached(upstream, statement)
    else:
        assert reached(upstream, statement)


def test_statement_as_a_list_is_refused_not_forwarded(post, upstream):
    # The security review's bypass of the old regex rule.
    response = post("/api/v2/statements", {"statement": ["DROP TABLE customers"]})
    assert response.status_code == 403
    body = response.json()
    assert body["error"] == "policy_error"
    assert "must be a string of SQL" in body["reason"]
    assert body["flow_id"]
    assert not reached(upstream, "DROP TABLE customers")


def test_duplicate_statement_keys_are_refused(post, upstream):
    raw = b'{"statement": "SELECT 1", "statement": "DROP TABLE customers"}'
    response = post("/api/v2/statements", raw)
    assert response.status_code == 403
    assert not reached(upstream, "DROP TABLE customers")


def test_mcp_execute_sql_tool(post, upstream):
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "execute_sql", "arguments": {"sql": "SELECT * FROM users LIMIT 5"}}}
    assert post("/mcp", call).status_code == 200
    call["params"]["arguments"]["sql"] = "WITH gone AS (DELETE FROM users RETURNING *) SELECT * FROM gone"
    denied = post("/mcp", call)  # not only a read: default block, as a JSON-RPC error (docs/mcp.md)
    assert denied.headers["X-Portcullis-Decision"] == "blocked"
    assert denied.json()["id"] == 1 and denied.json()["error"]["data"]["error"] == "blocked_by_policy", denied.text
    assert not reached(upstream, "DELETE FROM users")


@pytest.mark.parametrize(("body", "status"), [
    ({"query": "{ viewer { login } }"}, 200),
    ([{"query": "{ a }"}, {"query": "{ b }"}], 200),
    ({"query": "mutation { deleteRepository(id: 1) { id } }"}, 403),
    ({"query": "mutation { ...F } fragment F on Mutation { deleteIssue(id: 1) }"}, 403),
    ([{"query": "{ a }"}, {"query": "mutation { addStar }"}], 403),  # one op fails the batch
    ({"query": "query A { a } query B { b }"}, 403),  # which one runs? unknown
    ({"extensions": {"persistedQuery": {"version": 1, "sha256Hash": "ab" * 32}}}, 403),
])
def test_graphql_operations(post, upstream, body, status):
    response = post("/graphql", body)
    assert response.status_code == status, response.text
    assert reached(upstream, json.dumps(body)) == (status == 200)


def test_classification_is_recorded_and_queryable(gateway, upstream):
    # The last test of the shared gateway: reading the recording means stopping the
    # gateway that wrote it (the tests below have a rig or no gateway of their own).
    upstream.routes["/api/v2/statements"] = lambda seen: Canned(200, {"data": []})
    proxies = {"http": gateway.proxy_url}
    for path, body in (("/api/v2/statements", {"statement": "DELETE FROM analytics.events"}),
                       ("/graphql", {"query": "mutation Nuke { deleteRepository(id: 1) { id } }"})):
        assert requests.post(upstream.url(path), json=body, proxies=proxies, timeout=30).status_code == 403
    gateway.stop()  # flushes the recording
    with duckdb.connect(str(gateway.db), read_only=True) as con:
        rows = con.execute(
            "SELECT decision, tables_written, summary FROM sql_statements "
            "WHERE list_contains(where_missing, 'delete') AND list_contains(tables_written, 'analytics.events')"
        ).fetchall()
        gql = con.execute(
            "SELECT decision, operation, name, root_fields FROM graphql_operations WHERE name = 'Nuke'"
        ).fetchall()
    assert rows == [("blocked", ["analytics.events"],
                     "sql: delete on analytics.events, no WHERE; tables read: —; written: analytics.events")]
    assert gql == [("blocked", "mutation", "Nuke", ["deleteRepository"])]


def test_invalid_sql_spec_is_refused_when_the_rules_are_loaded(tmp_path):
    # In process: the rules file loader is what `portcullis run` calls at start-up, and
    # a loader error stops the gateway (a real start: test_cli's
    # test_run_refuses_an_invalid_rules_file_naming_the_line).
    path = tmp_path / "rules.yaml"
    path.write_text(textwrap.dedent(RULES))
    with pytest.raises(RuleFileError, match=r":30:61: rules\[4\]\.match\.sql\.functions: expected a glob"):
        load_policy(path)


# --- reviewers see the classification: the review page and the queue -------------------

HOLD_SQL = """  # appended to tests/support/review.py's RULES, a str.format template
  - name: sql-writes-held
    match:
      path: /v1/sql
      sql: {{field: "$.statement", dialect: postgres, statement: [delete, update]}}
    action: hold
    reason: "Writes need a data owner"
    approvers: [finance-leads]
"""


@pytest.fixture(scope="module")
def review_rig(tmp_path_factory, confdir):
    from tests.support import review

    # extra_rules adds top-level keys only; the hold rule joins the rig's own rules list.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(review, "RULES", review.RULES + HOLD_SQL)
        rig = review.ReviewRig(tmp_path_factory.mktemp("querylang-review"), confdir)
    yield rig
    rig.stop()


def test_reviewer_sees_the_classification_first_and_the_sql_laid_out(review_rig):
    from tests.support.review import PASSWORD_SUFFIX
    from tests.support.review_login import sign_in

    rig = review_rig
    rig.upstream.routes["/v1/sql"] = lambda seen: Canned(200, {"rows": []})
    statement = "delete from public.customers where id in (select id from stale)"
    call = rig.agent("POST", "/v1/sql", json={"statement": statement})
    held = rig.wait_held("/v1/sql")
    summary = "sql: delete on public.customers; tables read: stale; written: public.customers"
    assert held["query_summary"] == summary  # the queue's one-line summary
    detail = rig.flow(held["flow_id"])
    assert detail["queries"] == [{"language": "sql", "summary": summary, "pretty":
                                  "DELETE FROM public.customers\nWHERE\n  id IN (\n    SELECT\n      id\n    FROM stale\n  )"}]
    cookie, _ = sign_in(rig.ui_url, "alice", "alice" + PASSWORD_SUFFIX)
    page = requests.get(rig.ui_url + f"/flows/{held['flow_id']}", headers={"Cookie": cookie}, timeout=10,
                        proxies={"http": "", "https": ""}).text
    why = page.index('class="card why"')
    assert page.index(summary, why) < page.index('class="reason-big"', why)  # first line of the card
    # laid out and highlighted (server-side spans; the CSP allows no script)
    assert '<span class="s-kw">DELETE</span> <span class="s-kw">FROM</span> public.customers\n<span class="s-kw">WHERE</span>' in page
    queue = requests.get(rig.ui_url + "/", headers={"Cookie": cookie}, timeout=10,
                         proxies={"http": "", "https": ""}).text
    assert summary in queue
    assert rig.reject("alice", held["flow_id"], "no").status_code == 200
    assert call.result(timeout=30).status_code == 403


def test_unknown_sql_is_shown_raw_not_laid_out(review_rig):
    rig = review_rig
    # a delete (held) together with a statement only a generic command covers (unknown)
    rig.upstream.routes["/v1/sql"] = lambda seen: Canned(200, {"rows": []})
    call = rig.agent("POST", "/v1/sql", json={"statement": "DELETE FROM t WHERE a = 1; VACUUM FULL t"})
    held = rig.wait_held("/v1/sql")
    (query,) = rig.flow(held["flow_id"])["queries"]
    assert "unknown" in query["summary"] and "delete" in query["summary"]
    assert query["pretty"] is None  # VACUUM is a generic command: no layout that could mislead
    rig.reject("alice", held["flow_id"], "no")
    call.result(timeout=30)
