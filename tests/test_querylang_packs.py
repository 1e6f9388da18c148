"""The shipped SQL rule packs (rules/examples/) decide as their comments say, in process.

Each pack is loaded as shipped and judged on requests shaped like the real API's
(Snowflake /api/v2/statements, Databricks /api/2.0/sql/statements, Postgres over HTTP,
MCP tools/call execute_sql, PostgREST query filters).
"""

from __future__ import annotations

import json

import pytest

from addons.core.synthetic import make_flow
from addons.policy.conditions import EvaluationError, RequestView
from addons.policy.engine import load_policy
from gateway.settings import PROJECT_ROOT

EXAMPLES = PROJECT_ROOT / "rules" / "examples"


def decide(pack: str, method: str, url: str, body=None) -> str:
    policy = load_policy(EXAMPLES / f"{pack}.yaml")
    raw = json.dumps(body).encode() if body is not None else b""
    headers = {"content-type": "application/json"} if body is not None else {}
    return policy.evaluate(RequestView(make_flow(method, url, headers, raw))).action


SF = "https://acme.snowflakecomputing.com/api/v2/statements"
DB = "https://dbc-1.cloud.databricks.com/api/2.0/sql/statements"
PG = "http://pg-http.internal.example.com/sql"
MCP = "http://mcp-db.internal.example.com/mcp"


@pytest.mark.parametrize(("statement", "action"), [
    ("SELECT * FROM db.s.orders LIMIT 10", "allow"),
    ("SHOW TABLES", "allow"),
    ("INSERT INTO db.s.orders VALUES (1)", "hold"),
    ("DELETE FROM db.s.orders WHERE id = 1", "hold"),
    ("DELETE FROM db.s.orders", "block"),
    ("MERGE INTO t USING s ON t.a = s.a WHEN MATCHED THEN UPDATE SET t.b = s.b", "hold"),
    ("DROP TABLE db.s.orders", "block"),
    ("SELECT 1; DROP TABLE t", "block"),
    ("GRANT ROLE sysadmin TO USER agent", "block"),
    ("not sql", "block"),
])
def test_snowflake_pack(statement, action):
    assert decide("snowflake", "POST", SF, {"statement": statement, "warehouse": "WH"}) == action


def test_snowflake_pack_polls_results_and_refuses_list_statements():
    assert decide("snowflake", "GET", SF + "/01b2-handle") == "allow"
    with pytest.raises(EvaluationError):
        decide("snowflake", "POST", SF, {"statement": ["DROP TABLE customers"]})


@pytest.mark.parametrize(("statement", "action"), [
    ("SELECT * FROM main.sales.orders LIMIT 5", "allow"),
    ("DESCRIBE TABLE main.sales.orders", "allow"),
    ("INSERT INTO main.sales.orders SELECT * FROM main.sales.staging", "hold"),
    ("INSERT INTO prod.sales.orders VALUES (1)", "block"),
    ("OPTIMIZE main.sales.orders", "block"),
    ("DROP TABLE main.sales.orders", "block"),
])
def test_databricks_pack(statement, action):
    assert decide("databricks", "POST", DB, {"statement": statement, "warehouse_id": "w"}) == action


@pytest.mark.parametrize(("body", "action"), [
    ({"query": "SELECT * FROM users WHERE id = $1", "params": [1]}, "allow"),
    ({"queries": [{"query": "SELECT 1"}, {"query": "SELECT 2"}]}, "allow"),
    ({"queries": [{"query": "SELECT 1"}, {"query": "DELETE FROM users WHERE id = 1"}]}, "hold"),
    ({"query": "UPDATE users SET admin = true"}, "block"),
    ({"query": "SELECT pg_read_file('/etc/passwd')"}, "block"),
    ({"query": "SELECT pg_sleep(60)"}, "block"),
    ({"query": "DO $$ BEGIN DROP TABLE users; END $$"}, "block"),
    ({"query": "SELECT $$; DROP TABLE users$$"}, "allow"),
    ({"query": 'DROP TABLE "users"'}, "block"),
])
def test_postgres_http_pack(body, action):
    assert decide("postgres-http", "POST", PG, body) == action


def _tool(sql: str) -> dict:
    return {"jsonrpc": "2.0", "id": 3, "method": "tools/call",
            "params": {"name": "execute_sql", "arguments": {"sql": sql}}}


@pytest.mark.parametrize(("body", "action"), [
    ({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}, "allow"),
    ({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, "allow"),
    (_tool("SELECT name FROM customers LIMIT 10"), "allow"),
    (_tool("UPDATE customers SET tier = 'gold' WHERE id = 4"), "hold"),
    (_tool("WITH d AS (DELETE FROM customers RETURNING id) SELECT count(*) FROM d"), "hold"),
    (_tool("ALTER TABLE customers DROP COLUMN email"), "block"),
    (_tool("EXPLAIN ANALYZE DELETE FROM customers"), "block"),
    ({"jsonrpc": "2.0", "id": 4, "method": "tools/call",
      "params": {"name": "drop_everything", "arguments": {}}}, "block"),
])
def test_mcp_sql_pack(body, action):
    assert decide("mcp-sql", "POST", MCP, body) == action


@pytest.mark.parametrize(("method", "url", "action"), [
    ("GET", "/rest/v1/logs", "allow"),
    ("DELETE", "/rest/v1/logs", "block"),
    ("DELETE", "/rest/v1/logs?select=id", "block"),
    ("PATCH", "/rest/v1/logs?limit=10&order=id", "block"),
    ("DELETE", "/rest/v1/logs?id=", "block"),
    ("DELETE", "/rest/v1/logs?%73elect=id", "block"),  # PostgREST decodes it to select
    ("DELETE", "/rest/v1/logs?id=eq.5", "allow"),
    ("PATCH", "/rest/v1/logs?or=(id.eq.1,id.eq.2)", "allow"),
    ("POST", "/rest/v1/rpc/purge", "hold"),
])
def test_postgrest_pack(method, url, action):
    body = {"level": "info"} if method in ("PATCH", "POST") else None
    assert decide("postgrest", method, "http://db-api.internal.example.com" + url, body) == action


# --- portcullis explain prints the classification -------------------------------------


def test_explain_prints_the_sql_classification(capsys):
    from gateway.cli import main

    main(["explain", "--rules", str(EXAMPLES / "postgres-http.yaml"),
          "--json", json.dumps({"query": "DELETE FROM public.customers"}), "POST", PG])
    out = capsys.readouterr().out.splitlines()
    assert out[1] == "  sql: delete on public.customers, no WHERE; tables read: —; written: public.customers"
    assert out[-1].startswith("decision: block by no-unbounded-writes")


def test_explain_json_lists_classifications_and_reports_refusals(capsys):
    from gateway.cli import main

    main(["explain", "--format", "json", "--rules", str(EXAMPLES / "snowflake.yaml"),
          "--json", json.dumps({"statement": "SELECT 1; DROP TABLE t"}), "POST", SF])
    result = json.loads(capsys.readouterr().out)
    assert result["classified"] == ["sql: select, drop on t, no LIMIT, 2 statements; tables read: —; written: t"]
    assert (result["decision"], result["rule"]) == ("block", "no-ddl-or-unknown")
    main(["explain", "--rules", str(EXAMPLES / "snowflake.yaml"),
          "--json", json.dumps({"statement": ["DROP TABLE customers"]}), "POST", SF])
    assert "decision: block (policy_error)" in capsys.readouterr().out
