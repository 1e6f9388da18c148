"""What agent identity and credential injection cost per request, in-process.

* authentication: one ``Proxy-Authorization`` check for a basic token, an RS256 JWT and
  an ES256 JWT (keys cached), and the per-request re-check of an identity bound to a
  CONNECT tunnel;
* echo masking: scanning a 1 KiB, 100 KiB and 5 MiB response (gzip-encoded JSON) for
  two injected secrets and their encoded forms, with no echo (the common case) and with
  the secret echoed once.

Medians of repeated calls. Run: ``python -m bench.identity [--quick] [--json PATH]``;
writes bench/results/identity.json.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gzip
import hashlib
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from mitmproxy import http

from addons.credentials.addon import mask_response
from addons.identity.addon import Authenticator, Identity
from addons.identity.jwks import JwksCache, JwtConfig
from tests.support.jwtkeys import AUDIENCE, ISSUER, ec_key, jwks, rsa_key

RESULTS = Path(__file__).resolve().parent / "results" / "identity.json"
SECRETS = {"sk_live_51HxBENCHsecretKEY0042", "Bearer sk_live_51HxBENCHsecretKEY0042"}


def median_us(call: Callable[[], object], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return round(statistics.median(samples) * 1e6, 1)


def authenticator(directory: Path) -> tuple[Authenticator, dict[str, str]]:
    rsa, ec = rsa_key("r"), ec_key("e")
    (directory / "jwks.json").write_text(jwks(rsa, ec))
    cache = JwksCache("jwks.json", directory / "jwks.json", ("RS256", "ES256"), min_refresh=0, ttl=3600)
    cache.keys = cache.parse((directory / "jwks.json").read_bytes())
    cache.loaded_at = time.monotonic()
    token = "bench-token-0123456789abcdef"
    identities = [Identity(f"agent-{i}", frozenset({"g"}), hashlib.sha256(f"t{i}".encode()).hexdigest())
                  for i in range(999)]
    identities.append(Identity("agent", frozenset({"g"}), hashlib.sha256(token.encode()).hexdigest()))
    auth = Authenticator(identities, JwtConfig(ISSUER, AUDIENCE, cache))
    headers = {
        "basic token (1000 identities)": "Basic " + base64.b64encode(f"agent:{token}".encode()).decode(),
        "JWT RS256": f"Bearer {rsa.token(lifetime=3600)}",
        "JWT ES256": f"Bearer {ec.token(lifetime=3600)}",
    }
    return auth, headers


def bench_auth(repeat: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        auth, headers = authenticator(Path(tmp))
        loop = asyncio.new_event_loop()
        try:
            result = {name: median_us(lambda h=h: loop.run_until_complete(auth.authenticate(h)), repeat)
                      for name, h in headers.items()}
            bound = loop.run_until_complete(auth.authenticate(headers["basic token (1000 identities)"]))
        finally:
            loop.close()
        result["tunnel re-check (bound identity)"] = median_us(lambda: auth.revalidate(bound), repeat)
        return result


def bench_masking(repeat: int, sizes: dict[str, int]) -> dict[str, dict[str, float]]:
    result = {}
    secret = next(iter(SECRETS))
    for label, size in sizes.items():
        item = json.dumps({"id": 1, "text": "lorem ipsum " * 4})
        body = ("[" + ",".join([item] * (size // len(item) + 1)) + "]").encode()
        echoed = body[:-1] + f',"{secret}"]'.encode()
        row = {}
        for case, content in (("no echo", body), ("echoed once", echoed)):
            raw = gzip.compress(content)  # compressed once, outside the timing

            def run(raw: bytes = raw) -> None:
                response = http.Response.make(200, b"", {"Content-Type": "application/json",
                                                         "Content-Encoding": "gzip"})
                response.raw_content = raw
                mask_response(response, SECRETS)  # decode, scan, re-encode only if echoed
            row[f"{case} (µs)"] = median_us(run, repeat)
        result[label] = row
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    repeat = 50 if args.quick else 300
    sizes = {"1 KiB": 1024, "100 KiB": 100 * 1024, "5 MiB": 5 * 1024 * 1024}
    result = {
        "authentication (µs per request)": bench_auth(repeat),
        "echo masking, gzip JSON, 2 secrets": bench_masking(max(5, repeat // 30), sizes),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
