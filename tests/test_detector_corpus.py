"""Recall and false positives of every detector kind on an independent corpus.

tests/detector_corpus/<kind>.tsv holds positives (a sentence and the exact entity in it)
and negatives (look-alikes that must not match), grouped by where they come from: other
projects' public test data (Presidio, libphonenumber, the SWIFT IBAN registry, BIP-173,
EIP-55, ...), each group citing its source, plus look-alikes written for the corpus.
Each kind is held to recall >= 0.95 and false positives <= 0.02; the measured table is
in docs/masking.md ("Detector accuracy"), printed by ``python -m tests.test_detector_corpus``.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import pytest

from addons.masking.detectors import expand, find_all

CORPUS = Path(__file__).resolve().parent / "detector_corpus"
KINDS = sorted(path.stem for path in CORPUS.glob("*.tsv"))
MIN_RECALL, MAX_FALSE_POSITIVES = 0.95, 0.02


class Case(NamedTuple):
    positive: bool
    text: str
    entity: str
    line: int


def _unescape(field: str) -> str:
    out, chars = [], iter(field)
    for char in chars:
        if char == "\\":
            nxt = next(chars, "")
            out.append({"n": "\n", "t": "\t", "\\": "\\"}.get(nxt, "\\" + nxt))
        else:
            out.append(char)
    return "".join(out)


def load(kind: str) -> list[Case]:
    cases = []
    for number, line in enumerate((CORPUS / f"{kind}.tsv").read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        expect, text, entity = line.split("\t")
        assert expect in ("pos", "neg"), f"{kind}.tsv:{number}: expect must be pos or neg"
        cases.append(Case(expect == "pos", _unescape(text), _unescape(entity), number))
        if expect == "pos":
            assert _unescape(entity) in _unescape(text), f"{kind}.tsv:{number}: entity not in text"
    return cases


def found(case: Case, kind: str) -> bool:
    """A positive counts if a span is the entity exactly (one trailing character of slack:
    a two-part JWT may take the sentence's full stop as its empty signature)."""
    names = expand((kind,))
    start = case.text.index(case.entity)
    end = start + len(case.entity)
    return any(s == start and end <= e <= end + 1 for s, e, _ in find_all(case.text, names))


class Score(NamedTuple):
    positives: int
    recall: float
    negatives: int
    false_positive_rate: float
    missed: list[str]
    false_alarms: list[str]


def score(kind: str) -> Score:
    cases = load(kind)
    positives = [c for c in cases if c.positive]
    negatives = [c for c in cases if not c.positive]
    missed = [f"{kind}.tsv:{c.line}: {c.entity!r}" for c in positives if not found(c, kind)]
    alarms = [f"{kind}.tsv:{c.line}: {c.text!r}" for c in negatives if find_all(c.text, expand((kind,)))]
    return Score(len(positives), 1 - len(missed) / len(positives), len(negatives),
                 len(alarms) / len(negatives), missed, alarms)


def test_every_registered_kind_has_a_corpus():
    from addons.masking.detectors import FAMILIES
    members = {m for family in FAMILIES.values() for m in family if m not in FAMILIES}
    wanted = {"email", "phone", "card", "ssn", "iban", "secret", "ip", "wallet", "url_credentials"}
    assert wanted <= set(KINDS), sorted(wanted - set(KINDS))
    assert {"jwt", "bearer"} <= members  # measured through the secret corpus


@pytest.mark.parametrize("kind", KINDS)
def test_recall_and_false_positives(kind):
    result = score(kind)
    assert result.positives >= 20 and result.negatives >= 50, "corpus too small to measure"
    assert result.recall >= MIN_RECALL, "\n".join(result.missed)
    assert result.false_positive_rate <= MAX_FALSE_POSITIVES, "\n".join(result.false_alarms)


def main() -> None:
    print("| kind | positives | recall | negatives | false positives |")
    print("| --- | --- | --- | --- | --- |")
    for kind in KINDS:
        r = score(kind)
        print(f"| `{kind}` | {r.positives} | {r.recall:.3f} | {r.negatives} | {r.false_positive_rate:.3f} |")
        for line in r.missed + r.false_alarms:
            print("    ", line)


if __name__ == "__main__":
    main()
