"""The graphql: match key and its engine (addons/querylang/graphql.py), in process, and
the sql: match key's rule-level behaviour (fields, non-string SQL, readings that
disagree, the classified event). Through a real gateway: tests/test_querylang_gateway.py.
"""

from __future__ import annotations

import json
import textwrap

import pytest

from addons.core.flowstate import FlowState, FlowStates
from addons.core.rulefile import RuleFileError
from addons.core.synthetic import make_flow
from addons.policy.conditions import EvaluationError, RequestView
from addons.policy.engine import load_policy
from addons.querylang import graphql

RULES = """
version: 1
default: allow
rules:
  - name: block-deletes
    match:
      path: /graphql
      graphql: {operation: mutation, fields: ["delete*", "repository.collaborators*"]}
    action: block
  - name: block-unknown
    match:
      path: /graphql
      graphql: {operation: unknown}
    action: block
  - name: hold-big-payments
    match:
      path: /graphql
      graphql: {operation: mutation, name: "Pay*", variables: {"$.input.amount": {gt: 100}}}
    action: hold
  - name: only-queries
    match:
      path: /ro/graphql
      graphql: {operation: query, batch: all}
    action: allow
  - name: persisted-ok
    match:
      path: /persisted/graphql
      graphql: {persisted: allow, name: "Get*"}
    action: allow
  - name: sql-writes
    match:
      path: /sql
      sql: {statement: [insert, update, delete, drop, unknown]}
    action: block
  - name: sql-only-reads
    match:
      path: /ro/sql
      sql: {statement: {only: [select]}}
    action: allow
"""


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    path = tmp_path_factory.mktemp("rules") / "rules.yaml"
    path.write_text(textwrap.dedent(RULES))
    return load_policy(path)


@pytest.fixture(scope="module")
def block_default_policy(tmp_path_factory):
    path = tmp_path_factory.mktemp("rules") / "rules.yaml"
    path.write_text(textwrap.dedent(RULES).replace("default: allow", "default: block", 1))
    return load_policy(path)


def decide(policy, path: str, body, method: str = "POST", content_type: str = "application/json",
           state: FlowState | None = None):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    flow = make_flow(method, f"http://api.test{path}", {"content-type": content_type}, raw)
    return policy.evaluate(RequestView(flow, state=state)).action


def gql(query: str, **extra):
    return {"query": query, **extra}


@pytest.mark.parametrize(("body", "action"), [
    (gql("{ viewer { login } }"), "allow"),
    (gql("query Q { repository(name: \"x\") { issues { nodes { title } } } }"), "allow"),
    (gql("mutation { deleteRepository(id: 1) { id } }"), "block"),
    (gql("mutation M { alias: deleteRepository(id: 1) { id } }"), "block"),  # alias, not name
    (gql("mutation { ...F } fragment F on Mutation { deleteIssue(id: 1) { id } }"), "block"),
    (gql("mutation { ... on Mutation { deleteIssue(id: 1) { id } } }"), "block"),
    (gql("mutation { repository { collaboratorsAdd(id: 1) } }"), "block"),  # dotted path
    (gql("mutation { addStar(id: 1) { id } }"), "allow"),
    (gql("query { deleteRepository }"), "allow"),  # a query field named delete*: not a mutation
    (gql("{ broken"), "block"),  # does not parse: unknown
    (gql("query A { a } mutation B { deleteRepository(id: 1) }"), "block"),  # 2 ops, no name
    (gql("query A { a } mutation B { deleteRepository(id: 1) }", operationName="A"), "allow"),
    (gql("query A { a } mutation B { deleteRepository(id: 1) }", operationName="B"), "block"),
    (gql("query A { a }", operationName="Nope"), "block"),  # names no operation
    (gql("mutation { ...F } fragment F on Mutation { ...F }"), "block"),  # cycle: unknown
    (gql("mutation { ...Missing }"), "block"),
    ({"extensions": {"persistedQuery": {"version": 1, "sha256Hash": "ab" * 32}}}, "block"),
    ([gql("{ a }"), gql("mutation { deleteRepository(id: 1) }")], "block"),  # batch: any blocks
    ([gql("{ a }"), gql("{ b }")], "allow"),
    (gql("mutation Pay($input: In!) { pay(input: $input) { id } }",
         variables={"input": {"amount": 500}}), "hold"),
    (gql("mutation Pay($input: In!) { pay(input: $input) { id } }",
         variables={"input": {"amount": "500"}}), "hold"),  # typed: "500" is 500
    (gql("mutation Pay($input: In!) { pay(input: $input) { id } }",
         variables={"input": {"amount": 5}}), "allow"),
    ({"notgraphql": 1}, "allow"),
])
def test_graphql_decisions(policy, body, action):
    assert decide(policy, "/graphql", body) == action


def test_batched_allow_rule_needs_every_operation(block_default_policy):
    assert decide(block_default_policy, "/ro/graphql", [gql("{ a }"), gql("{ b }")]) == "allow"
    # one mutation in the batch: the allow rule (batch: all) does not match -> default block
    assert decide(block_default_policy, "/ro/graphql",
                  [gql("{ a }"), gql("mutation { addStar }")]) == "block"


def test_persisted_hash_is_allowed_only_where_a_rule_says_so(block_default_policy):
    persisted = {"operationName": "GetUser",
                 "extensions": {"persistedQuery": {"version": 1, "sha256Hash": "ab" * 32}}}
    assert decide(block_default_policy, "/persisted/graphql", persisted) == "allow"
    assert decide(block_default_policy, "/persisted/graphql", {**persisted, "operationName": "Drop"}) == "block"


def test_graphql_over_get_reads_the_query_string(policy):
    from urllib.parse import quote
    q = quote("mutation { deleteRepository(id: 1) }")
    flow = make_flow("GET", f"http://api.test/graphql?query={q}", {}, b"")
    assert policy.evaluate(RequestView(flow)).action == "block"
    v = quote(json.dumps({"input": {"amount": 500}}))
    q = quote("mutation Pay($input: In!) { pay(input: $input) }")
    flow = make_flow("GET", f"http://api.test/graphql?query={q}&variables={v}", {}, b"")
    assert policy.evaluate(RequestView(flow)).action == "hold"


def test_non_string_query_is_an_evaluation_error(policy):
    with pytest.raises(EvaluationError, match="query must be str"):
        decide(policy, "/graphql", {"query": ["mutation { deleteRepository }"]})


def test_engine_reports_names_and_paths():
    (op,) = graphql.operations({"query": "query Q { a { b { c } } d }"})
    assert (op.kind, op.name, op.root_fields) == ("query", "Q", ("a", "d"))
    assert set(op.paths) == {"a", "a.b", "a.b.c", "d"}
    assert op.summary() == "graphql: query Q; fields: a, d"


def test_fragment_bomb_is_bounded():
    frags = ["fragment F0 on Q { a b }"] + [f"fragment F{i} on Q {{ ...F{i-1} ...F{i-1} }}" for i in range(1, 30)]
    doc = "query { ...F29 } " + " ".join(frags)
    (op,) = graphql.operations({"query": doc})
    assert op.kind == "unknown" and "fields" in (op.unknown_reason or "")


@pytest.mark.parametrize("spec", [
    "{operation: delete}", "{bogus: 1}", "{persisted: yes}", "{batch: some}", "{variables: {x: 1}}",
])
def test_bad_graphql_specs_are_rule_file_errors(tmp_path, spec):
    path = tmp_path / "r.yaml"
    path.write_text(f"version: 1\nrules:\n  - name: r\n    match:\n      graphql: {spec}\n    action: block\n")
    with pytest.raises(RuleFileError):
        load_policy(path)


# --- sql: at the rule level -------------------------------------------------------------


@pytest.mark.parametrize(("body", "action"), [
    ({"statement": "SELECT 1"}, "allow"),
    ({"statement": "DELETE FROM t"}, "block"),
    ({"query": "drop table t"}, "block"),  # default fields: $.query
    ({"sql": "INSERT INTO t VALUES (1)"}, "block"),
    ({"params": {"arguments": {"sql": "UPDATE t SET a = 1"}}}, "block"),  # MCP tools/call
    ({"Statement": "DELETE FROM t"}, "block"),  # field names are case-folded
    ({"statement": "SELECT 1", "query": "DROP TABLE t"}, "block"),  # every candidate counts
    ({"statement": "/*!50000DROP*/ TABLE t"}, "block"),
    ({"other": "DROP TABLE t"}, "allow"),  # no SQL at any field: the rule does not apply
])
def test_sql_rule_decisions(policy, body, action):
    assert decide(policy, "/sql", body) == action


def test_sql_in_a_form_body_and_the_query_string(policy):
    assert decide(policy, "/sql", b"statement=DROP+TABLE+t", content_type="application/x-www-form-urlencoded") == "block"
    flow = make_flow("GET", "http://api.test/sql?sql=DELETE%20FROM%20t", {}, b"")
    assert policy.evaluate(RequestView(flow)).action == "block"


@pytest.mark.parametrize("value", [["DROP TABLE customers"], {"text": "DROP TABLE t"}, 5, None, True])
def test_sql_field_that_is_not_a_string_is_refused(policy, value):
    with pytest.raises(EvaluationError, match="must be a string of SQL"):
        decide(policy, "/sql", {"statement": value})


def test_duplicate_sql_keys_that_disagree_are_refused(policy):
    raw = b'{"statement": "SELECT 1", "statement": "DROP TABLE t"}'
    with pytest.raises(EvaluationError):
        decide(policy, "/sql", raw)


def test_only_reads_allow_rule(block_default_policy):
    assert decide(block_default_policy, "/ro/sql", {"statement": "SELECT * FROM t"}) == "allow"
    # a read with a data-modifying CTE is not only a read
    assert decide(block_default_policy, "/ro/sql",
                  {"statement": "WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x"}) == "block"
    assert decide(block_default_policy, "/ro/sql", {"statement": "SELECT 1; SET role admin"}) == "block"


def test_classification_is_emitted_once_as_an_event(policy):
    events = []
    states = FlowStates()
    states.bus.subscribe(events.append)
    state = states.detached("flow-1")
    decide(policy, "/sql", {"statement": "DELETE FROM public.customers"}, state=state)
    decide(policy, "/sql", {"statement": "DELETE FROM public.customers"}, state=state)
    classified = [e for e in events if e.kind == "classified"]
    assert len(classified) == 1
    detail = classified[0].detail
    assert detail["language"] == "sql"
    assert detail["classification"]["kinds"] == ["delete"]
    assert detail["classification"]["where_missing"] == ["delete"]
    assert detail["classification"]["tables_written"] == ["public.customers"]


@pytest.mark.parametrize("spec", [
    "{dialect: oracle}", "{statement: [destroy]}", "{where: present}", "{field: statement}",
    "{statement: {all: [select]}}", "{tables: []}", "{multi_statement: yes please}", "{nope: 1}",
])
def test_bad_sql_specs_are_rule_file_errors(tmp_path, spec):
    path = tmp_path / "r.yaml"
    path.write_text(f"version: 1\nrules:\n  - name: r\n    match:\n      sql: {spec}\n    action: block\n")
    with pytest.raises(RuleFileError):
        load_policy(path)


def test_only_short_documents_are_cached():
    graphql._cached.cache_clear()
    short = "query { a }"
    long = "query { a }" + " " * graphql.MAX_CACHED_CHARS
    graphql.analyse(short)
    graphql.analyse(long)
    assert graphql._cached.cache_info().currsize == 1  # a long document is parsed, not kept
