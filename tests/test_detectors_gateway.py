"""The new detector kinds and forms work in rules, end to end.

A real gateway with ``detect:`` masks naming every kind (``ip``, ``wallet`` and
``url_credentials`` new in issue 17) fetches a JSON body from a real upstream on
127.0.0.1 through HTTP_PROXY; every entity comes back replaced with
``[masked:<kind>]`` and a documented example key is left alone.
"""

from __future__ import annotations

import requests

from tests.support.upstream import Canned

NOTES = {
    "iban": "pay to BY13 NBRB 3600 9000 0000 2Z00 AB00 by Friday",
    "email": "write to коля@пример.рф",
    "ssn": "SSN 078.05.1123 on file",
    "card": "UATP 135410014004955 charged",
    "phone": "mobile 07400123456",
    "ip": "login from 2001:db8::1 and 203.0.113.7",
    "wallet": "send to 0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
    "secret": "hook http://hooks.slack.com/workflows/T01ABCDEF/A02GHIJKL/394857/Zk3vT9qL2mXw8RbN4cYp7HsJ",
    "url_credentials": "clone https://deploy:hunter2@git.example.com/repo.git",
    "example": "the docs use AKIAIOSFODNN7EXAMPLE",
}
MASKED = {
    "iban": "pay to [masked:iban] by Friday",
    "email": "write to [masked:email]",
    "ssn": "SSN [masked:ssn] on file",
    "card": "UATP [masked:card] charged",
    "phone": "mobile [masked:phone]",
    "ip": "login from [masked:ip] and [masked:ip]",
    "wallet": "send to [masked:wallet]",
    "secret": "hook [masked:secret]",
    "url_credentials": "clone https://[masked:url_credentials]@git.example.com/repo.git",
    "example": "the docs use AKIAIOSFODNN7EXAMPLE",
}


def test_every_kind_is_masked_through_the_gateway(start_gateway, use_gateway, upstream):
    upstream.routes["/notes"] = lambda seen: Canned(200, NOTES)
    gateway = start_gateway("""
        version: 1
        default: allow
        rules:
          - name: scan-notes
            match: {path: /notes}
            mask:
              - {detect: [iban, email, ssn, card, phone, ip, wallet, secret]}
    """)
    use_gateway(gateway)
    response = requests.get(upstream.url("/notes"), timeout=20)
    assert response.status_code == 200, response.text
    assert response.json() == MASKED
    assert response.headers["X-Portcullis-Masked"] == "10"
