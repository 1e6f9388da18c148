"""Detector speed per kind: short texts per second, in-process, one core.

Each kind runs ``find_all`` over two sets of short strings (the values a ``detect`` mask
meets in a JSON response):

* ``mixed``: 9 of 10 strings are ordinary values (names, ids, timestamps, amounts,
  status words, URLs), 1 of 10 holds an entity of that kind (from the detector corpus);
* ``entities``: only the corpus sentences that contain an entity (the worst case: every
  string reaches the regex and the validator).

Target (issue 17): >= 50,000 short texts/s per kind on the mixed set. Run:
``python -m bench.detectors [--quick]``; writes bench/results/detectors.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from addons.masking.detectors import expand, find_all
from tests.test_detector_corpus import KINDS, load

RESULTS = Path(__file__).resolve().parent / "results" / "detectors.json"
ORDINARY = [
    "active", "Customer Nº42", "2024-01-15T10:20:30Z", "1299.50", "EUR", "order 1234567890", "true",
    "Shipped to warehouse 7", "https://api.example.com/v1/items?page=2", "Ann Lee", "pending review",
    "id_8f3a2c", "The quick brown fox jumps over the lazy dog.", "42", "v2.3.1", "en-GB",
    "Please call back tomorrow morning.", "12 items", "null", "Berlin, Germany",
]


def texts_per_second(texts: list[str], names: tuple[str, ...], budget_s: float) -> float:
    done, started = 0, time.process_time()
    while True:
        for text in texts:
            find_all(text, names)
        done += len(texts)
        elapsed = time.process_time() - started
        if elapsed >= budget_s:
            return done / elapsed


def measure(budget_s: float) -> dict[str, dict[str, int]]:
    report = {}
    for kind in KINDS:
        names = expand((kind,))
        entities = [case.text for case in load(kind) if case.positive]
        mixed = []
        for i, text in enumerate(entities):
            mixed.extend(ORDINARY[(i * 9 + j) % len(ORDINARY)] for j in range(9))
            mixed.append(text)
        find_all(mixed[0], names)  # compile, load phone metadata
        report[kind] = {"mixed_per_s": round(texts_per_second(mixed, names, budget_s)),
                        "entities_per_s": round(texts_per_second(entities, names, budget_s))}
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.detectors", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs (a smoke run)")
    args = parser.parse_args(argv)
    report = measure(0.3 if args.quick else 2.0)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print("| kind | mixed texts/s | entity texts/s |")
    print("| --- | --- | --- |")
    for kind, row in report.items():
        print(f"| `{kind}` | {row['mixed_per_s']:,} | {row['entities_per_s']:,} |")
    print(f"written to {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
