"""Detectors: tables of true positives (exact span) and look-alikes that must not match."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from addons.masking.detectors import (
    DETECTORS,
    Detector,
    expand,
    find_all,
    iban_ok,
    keccak256,
    luhn_ok,
    real_secret,
    register,
)

PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA0Z3VS5JJcds3xfn/ygWyF8PbnGy0AHB7\n-----END RSA PRIVATE KEY-----"
GH = "Zk3vT9qL2mXw8RbN4cYp7HsJd6FgA1eU0oKi"  # 36 random base62 characters
UNSIGNED_JWT = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiJ9"  # {"alg":"none"}.{"sub":"admin"}, no signature
PEM_NO_END = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7"
PGP = "-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nlQOYBF3kq0kBCADQ8Zk3vT9qL2mXw8RbN4cYp7HsJd6FgA1e\n-----END PGP PRIVATE KEY BLOCK-----"
JWT = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"

POSITIVES = [
    ("email", "write to ann.lee+tag@mail.example.co.uk today", "ann.lee+tag@mail.example.co.uk"),
    ("email", "<zoe_99@example.io>", "zoe_99@example.io"),
    ("phone", "call +1 415 555 2671.", "+1 415 555 2671"),
    ("phone", "tel:+14155552671", "+14155552671"),
    ("phone", "office +44 20 7946 0958", "+44 20 7946 0958"),
    ("phone", "Berlin +49 (0)30 1234567", "+49 (0)30 1234567"),
    ("phone", "(415) 555-2671", "(415) 555-2671"),
    ("phone", "at 415.555.2671 after 5", "415.555.2671"),
    ("phone", "UK 020 7946 0958", "020 7946 0958"),
    ("card", "visa 4242 4242 4242 4242 exp", "4242 4242 4242 4242"),
    ("card", "mc 5555-5555-5555-4444", "5555-5555-5555-4444"),
    ("card", "amex 378282246310005", "378282246310005"),
    ("card", "19 digits 6011000990139424000", None),  # Luhn decides; checked below
    ("ssn", "ssn 123-45-6789", "123-45-6789"),
    ("ssn", "ssn 529 12 3456", "529 12 3456"),
    ("iban", "pay DE89 3704 0044 0532 0130 00 now", "DE89 3704 0044 0532 0130 00"),
    ("iban", "GB82WEST12345698765432", "GB82WEST12345698765432"),
    ("iban", "FR1420041010050500013M02606.", "FR1420041010050500013M02606"),
    ("secret", "AKIA2E0A8F3B244C9986", "AKIA2E0A8F3B244C9986"),
    ("secret", "token=ghp_" + GH, "ghp_" + GH),
    ("secret", "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz", "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz"),
    ("secret", "glpat-abcdefghij0123456789", "glpat-abcdefghij0123456789"),
    ("secret", "xoxb-2837465019-kQ3vTz8LmP", "xoxb-2837465019-kQ3vTz8LmP"),
    ("secret", "sk_live_4eC39HqLyjWDarjtT1zdp7dc", "sk_live_4eC39HqLyjWDarjtT1zdp7dc"),
    ("secret", "key: sk-proj-" + GH + "Q7z", "sk-proj-" + GH + "Q7z"),
    ("secret", "AIzaSyDq3kX9vT2mL8bN4cYp7HsJd6FgA1eU0oK", "AIzaSyDq3kX9vT2mL8bN4cYp7HsJd6FgA1eU0oK"),
    ("secret", f"key:\n{PEM}\n", PEM),
    ("secret", f"jwt {JWT} end", JWT),
    ("secret", "Authorization: Bearer abcDEF123456ghiJKL789", "abcDEF123456ghiJKL789"),
    # Issue 17: forms and kinds real documents use.
    ("iban", "IBAN BY13-NBRB-3600-9000-0000-2Z00-AB00.", "BY13-NBRB-3600-9000-0000-2Z00-AB00"),
    ("iban", "TL380080012345678910157 (Timor-Leste)", "TL380080012345678910157"),
    ("email", "mail info@пример.xn--p1ai now", "info@пример.xn--p1ai"),
    ("email", "to josé.müller@correo.es", "josé.müller@correo.es"),
    ("ssn", "ssn 078.05.1123", "078.05.1123"),
    ("card", "card 4111 1111-1111.1111 ok", "4111 1111-1111.1111"),
    ("card", "UATP 135410014004955", "135410014004955"),
    ("phone", "mobile 07400123456", "07400123456"),
    ("phone", "Handy 015123456789", "015123456789"),
    ("secret", "sk_prod_" + GH, "sk_prod_" + GH),
    ("secret", "rk_live_" + GH, "rk_live_" + GH),
    ("secret", UNSIGNED_JWT, UNSIGNED_JWT),
    ("secret", f"key {PEM_NO_END}", PEM_NO_END),
    ("secret", f"{PGP}\n", PGP),
    ("secret", "hooks.slack.com/triggers/T0123ABCD/49588/" + GH, "hooks.slack.com/triggers/T0123ABCD/49588/" + GH),
    ("url_credentials", "https://deploy:hunter2@git.example.com/x", "deploy:hunter2"),
    ("ip", "from 203.0.113.7:443", "203.0.113.7"),
    ("ip", "v6 fe80::1ff:fe23:4567:890a.", "fe80::1ff:fe23:4567:890a"),
    ("wallet", "btc 1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa", "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa"),
    ("wallet", "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq", "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq"),
    ("wallet", "eth 0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed", "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"),
]

NEGATIVES = [
    ("email", "user@localhost"),
    ("email", "@handle and a@b.c"),
    ("email", "not an email: foo at example dot com"),
    ("phone", "2024-01-15"),
    ("phone", "2024-01-15T10:20:30Z"),
    ("phone", "version 1.2.3.4"),
    ("phone", "ip 192.168.100.1000"),
    ("phone", "order 1234567890"),
    ("phone", "(115) 555-2671"),  # area codes never start with 1
    ("phone", "+1 23"),
    ("card", "4242 4242 4242 4241"),  # Luhn fails
    ("card", "ts 1700000000000"),  # a millisecond timestamp
    ("card", "0000000000000000"),
    ("card", "4444444444444"),  # all one digit
    ("card", "id 42424242424242424242424"),  # too long
    ("card", "v4242424242424242x"),  # glued into a word
    ("ssn", "000-12-3456"),
    ("ssn", "666-12-3456"),
    ("ssn", "912-12-3456"),
    ("ssn", "123-00-4567"),
    ("ssn", "123-45-0000"),
    ("ssn", "078-05-1120"),
    ("ssn", "123-45-67890"),
    ("ssn", "123-45 6789"),  # mixed separators
    ("ssn", "1234-56-789"),
    ("iban", "GB82WEST12345698765433"),  # checksum fails
    ("iban", "DE89 3704 0044 0532 0130"),  # too short for DE
    ("iban", "XX89370400440532013000"),  # no such country
    ("secret", "AKIAEXAMPLE"),
    ("secret", "ghp_short"),
    ("secret", "sk-learn is a library"),
    ("secret", "pk_live_4eC39HqLyjWDarjtT1zdp7dc"),  # publishable, not secret
    ("secret", "eyJhbGciOi.eyJzdWIiOiIx.notasignature"),
    ("secret", "eyJub3RqdXN0.eyJzdWIiOiIxMjM0In0.abcdefghijkl"),  # header is not a JWT header
    ("secret", "Bearer token"),
    # Placeholders and keys printed in vendors' documentation are not secrets.
    ("secret", "AKIAIOSFODNN7EXAMPLE"),
    ("secret", "AIzaSyA-1234567890abcdefghijklmnopqrstu"),  # counting, not random
    ("secret", "token=ghp_" + "x" * 36),
    ("secret", "token=ghp_" + "A1b2" * 9),
    ("secret", "key: sk-proj-" + "x" * 40),
    ("secret", "sk_test_4eC39HqLyjWDarjtT1zdp7dc"),
    ("secret", "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX"),
    ("iban", "GB01BARC20714583608387"),  # check digits 01 never issued
    ("ssn", "ssn 078.05.1120"),  # advertising number, dotted
    ("ssn", "666.12.3456"),
    ("card", "1700000000000000"),  # microsecond timestamp: a 1... number of 16 digits
    ("card", "4111 1111-1111.1112"),  # Luhn still required with mixed separators
    ("phone", "id 00012345678"),  # bare digits that are no mobile number
    ("url_credentials", "ssh://git@github.com/org/repo"),
    ("ip", "version 1.2.3.4"),
    ("ip", "256.1.1.1"),
    ("wallet", "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD"),  # EIP-55 checksum broken
    ("wallet", "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNb"),  # base58check broken
    ("secret", "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8A\n-----END PUBLIC KEY-----"),
]


@pytest.mark.parametrize(("name", "text", "expected"), POSITIVES, ids=[f"{p[0]}:{p[1][:30]}" for p in POSITIVES])
def test_true_positives(name, text, expected):
    found = [text[s:e] for s, e, _ in find_all(text, expand((name,)))]
    if expected is None:
        digits = re.sub(r"\D", "", text)
        assert bool(found) == luhn_ok(digits)
    else:
        assert found == [expected]


@pytest.mark.parametrize(("name", "text"), NEGATIVES, ids=[f"{n[0]}:{n[1][:30]}" for n in NEGATIVES])
def test_look_alikes_are_not_detected(name, text):
    assert find_all(text, expand((name,))) == []


def test_negatives_are_not_caught_by_any_other_detector_either():
    everything = expand(("email", "phone", "card", "ssn", "iban", "secret"))
    for name, text in NEGATIVES:
        if name in ("phone", "card", "ssn", "iban"):
            numbers = [text[s:e] for s, e, kind in find_all(text, everything) if kind in ("phone", "card", "ssn")]
            assert numbers == [], (name, text, numbers)


def test_overlaps_prefer_the_earlier_then_longer_span():
    text = "4242 4242 4242 4242 and 415-555-2671"
    kinds = [kind for _, _, kind in find_all(text, ("phone", "card"))]
    assert kinds == ["card", "phone"]


def test_checksums():
    assert luhn_ok("4242424242424242") and not luhn_ok("4242424242424241")
    assert iban_ok("GB82WEST12345698765432") and not iban_ok("GB82WEST12345698765423")
    # Keccak-256 (Ethereum's, not NIST SHA3): the published digests of "" and "abc".
    assert keccak256(b"").hex() == "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"
    assert keccak256(b"abc").hex() == "4e03657aea45a94fc7d47ba826c8d667c0d1e6e33a64a036ec44f58fa12d6c45"


def test_placeholders_and_documented_examples_are_not_secrets():
    assert not real_secret("AKIAIOSFODNN7EXAMPLE") and not real_secret("ghp_" + "x" * 36)
    assert not real_secret("sk_live_" + "ab" * 12)  # two characters repeated: under 3 bits each
    assert real_secret("ghp_" + GH) and real_secret(PEM)


def test_the_registry_is_extensible():
    register(Detector("employee_id", re.compile(r"\bEMP-\d{6}\b")))
    try:
        assert find_all("by EMP-123456.", ("employee_id",)) == [(3, 13, "employee_id")]
    finally:
        del DETECTORS["employee_id"]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from("0123456789 -+().@abcXYZ_\n"), max_size=80) | st.text(max_size=80))
def test_spans_are_ordered_disjoint_and_inside_the_text(text):
    spans = find_all(text, expand(("email", "phone", "card", "ssn", "iban", "secret", "ip", "wallet")))
    assert all(0 <= s < e <= len(text) for s, e, _ in spans)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))
