"""The rule index only narrows: every rule that matches a request is among its candidates.

The index (addons.policy.engine.RuleIndex / PathIndex) decides which rules are evaluated at
all, so a bug there would silently skip a block rule. These tests compare it with
brute force: evaluating every rule of the file.
"""

from __future__ import annotations

import json
from urllib.parse import quote

from hypothesis import example, given, settings
from hypothesis import strategies as st

from addons.core.synthetic import make_flow
from addons.policy.conditions import RequestView
from addons.policy.engine import compile_policy

SEGMENTS = ["v1", "V1", "tables", "Tables", "a", "", "x*", "*", "**", "?", "ſ", "s", "K", "k", "\u212a"]
HOSTS = ["api.example.com", "*.example.com", "other.test", "*"]


def _pattern(parts: list[str]) -> str:
    return "/" + "/".join(parts)


path_patterns = st.lists(st.sampled_from(SEGMENTS), min_size=0, max_size=4).map(_pattern)
rule_specs = st.fixed_dictionaries(
    {"path": st.lists(path_patterns, min_size=1, max_size=3)},
    optional={"host": st.sampled_from(HOSTS), "method": st.sampled_from(["GET", "POST"])},
)
request_paths = st.lists(
    st.sampled_from(["v1", "V1", "tables", "TABLES", "a", "b", "x1", "s", "ſ", "k", "\u212a", ""]),
    min_size=0, max_size=5,
).map(_pattern)


def _policy(specs: list[dict]):
    rules = [{"name": f"r{i}", "match": spec, "action": "block"} for i, spec in enumerate(specs)]
    return compile_policy(json.dumps({"version": 1, "rules": rules}))


@settings(max_examples=300, deadline=None)
# Unicode case folding: "ſ" matches "s" and the Kelvin sign matches "k" case-insensitively.
@example([{"path": ["/ſ/**"]}], "/s/x", "api.example.com", "GET")
@example([{"path": ["/s"]}], "/ſ", "api.example.com", "GET")
@example([{"path": ["/\u212a"]}], "/K", "api.example.com", "GET")
@given(st.lists(rule_specs, min_size=1, max_size=12), request_paths,
       st.sampled_from(["api.example.com", "deep.api.example.com", "other.test"]),
       st.sampled_from(["GET", "POST"]))
def test_candidates_include_every_matching_rule(specs, path, host, method):
    policy = _policy(specs)
    # Percent-encoded on the wire; the view decodes it (non-ASCII segments included).
    view = RequestView(make_flow(method, f"http://{host}{quote(path)}"))
    matching = {r.name for r in policy.rules if r.match.holds(view)}
    candidates = {r.name for r in policy.index.candidates(view.host, view.method, view.path)}
    assert matching <= candidates


def test_path_index_leaves_out_rules_for_other_paths():
    specs = [{"host": "api.example.com", "path": f"/v1/svc{i}/**"} for i in range(100)]
    specs += [{"path": "/v1/svc7/items/*"}, {"host": "api.example.com"}]
    policy = _policy(specs)
    view = RequestView(make_flow("GET", "http://api.example.com/V1/Svc7/items/3"))
    candidates = [r.name for r in policy.index.candidates(view.host, view.method, view.path)]
    # In file order: svc7's rule, the host-wide rule, the host-less svc7 items rule.
    assert candidates == ["r7", "r100", "r101"]
    assert policy.evaluate(view).rule_names == ["r7", "r100", "r101"]


def test_without_a_path_every_rule_of_the_host_is_a_candidate():
    policy = _policy([{"host": "api.example.com", "path": f"/p{i}"} for i in range(5)])
    assert len(policy.index.candidates("api.example.com", "GET")) == 5
