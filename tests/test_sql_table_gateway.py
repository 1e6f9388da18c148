"""The classifier's table of common statements through a real gateway process, a real
upstream and a real client: what the recording says of each request (the `classified`
event, read through the sql_statements view) must be exactly what the in-process table
(tests/test_sql_classify.py) expects.

The whole matrix (every statement in every dialect family) runs in-process in
tests/test_sql_classify.py; here a stride sample goes end to end: every statement once,
statement i in dialect i mod len(DIALECTS), so every dialect's rule and path is crossed
many times (the wiring under test) at 1/len(DIALECTS) of the requests.
"""

from __future__ import annotations

import duckdb
import requests

from addons.querylang import sql
from tests.support.upstream import Canned
from tests.test_sql_classify import COMMON, DIALECTS

ALL_KINDS = ", ".join(sql.KINDS)


def rules() -> str:
    lines = ["version: 1", "default: allow", "rules:"]
    for dialect in DIALECTS:
        lines += [f"  - name: classify-{dialect}",
                  f"    match: {{path: /sql/{dialect}/**, sql: {{dialect: {dialect}, statement: [{ALL_KINDS}]}}}}",
                  "    action: allow"]
    return "\n".join(lines) + "\n"


def test_every_common_statement_in_every_dialect_is_classified_right_end_to_end(start_gateway, upstream):
    gateway = start_gateway(rules(), "--ui", "off")
    expected: dict[str, set[str]] = {}
    with requests.Session() as http:
        http.trust_env = False
        http.proxies = {"http": gateway.proxy_url}
        for index, (text, kinds, _read, _written) in enumerate(COMMON):
            dialect = DIALECTS[index % len(DIALECTS)]
            path = f"/sql/{dialect}/{index}"
            upstream.routes[path] = Canned(200, {"ok": True})
            response = http.post(upstream.url(path), json={"statement": text}, timeout=30)
            assert response.status_code == 200, (dialect, text, response.text)
            expected[path] = kinds
    gateway.stop()  # flushes the recording
    with duckdb.connect(str(gateway.db), read_only=True) as con:
        recorded = dict(con.execute("SELECT path, kinds FROM sql_statements").fetchall())
    assert len(expected) == len(COMMON) >= 60
    assert {path.split("/")[2] for path in expected} == set(DIALECTS)
    wrong = {path: (sorted(recorded.get(path) or []), sorted(kinds))
             for path, kinds in expected.items() if set(recorded.get(path) or ()) != kinds}
    assert not wrong, f"{len(wrong)} statements classified differently end to end: {wrong}"
