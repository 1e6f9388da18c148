"""The identity addon in process: bad identities (rules file, --identities file) are
refused naming what is wrong, conflicts between the two sources, rejected edits keep the
previous identities, and the authenticator's JWT failure answers."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import textwrap
import time
from pathlib import Path

import jwt
import pytest
from mitmproxy import exceptions
from mitmproxy.test import taddons

from addons.core.flowstate import FlowStates
from addons.core.rulefile import RuleFileError
from addons.identity.addon import (
    ANONYMOUS_PRINCIPAL,
    Authenticator,
    AuthFailure,
    IdentityAddon,
    Principal,
    load_identities_file,
)
from addons.policy.engine import compile_policy
from tests.support.jwtkeys import AUDIENCE, ISSUER, SigningKey, ec_key, jwks, rsa_key

TOKEN = "agent-token-0123456789"
DIGEST = hashlib.sha256(TOKEN.encode()).hexdigest()


def rules(body: str) -> str:
    return "version: 1\n" + textwrap.dedent(body)


def identity_yaml(name: str = "billing-agent", digest: str = DIGEST) -> str:
    return f"identities:\n  - {{name: {name}, groups: [billing], token_sha256: '{digest}'}}\n"


@pytest.mark.parametrize(("body", "message"), [
    ("identities: {a: 1}", "identities must be a list"),
    (f"identities:\n  - {{name: 'a:b', token_sha256: '{DIGEST}'}}", "name must be 1-64 letters"),
    (f"identities:\n  - {{name: anonymous, token_sha256: '{DIGEST}'}}", "'anonymous' is reserved"),
    (f"identities:\n  - {{name: jwt, token_sha256: '{DIGEST}'}}", "'jwt' is reserved"),
    ("identities:\n  - {name: a, token_sha256: 'abc'}", "token_sha256 must be 64 hex digits"),
    (f"identities:\n  - {{name: a, token_sha256: '{DIGEST}', groups: [ok, '']}}",
     "groups must be a list of non-empty strings"),
    (f"identities:\n  - {{name: a, token_sha256: '{DIGEST}', groups: billing}}",
     "groups must be a list of non-empty strings"),
])
def test_bad_identities_in_the_rules_file_are_refused(body: str, message: str) -> None:
    with pytest.raises(RuleFileError) as err:
        compile_policy(rules(body), "test.yaml")
    assert message in str(err.value)
    assert "identities[0]" in str(err.value) or "identities:" in str(err.value)


def test_an_identities_file_that_cannot_be_read_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(RuleFileError, match="cannot read identities file"):
        load_identities_file(missing)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(RuleFileError, match="cannot read identities file"):
        load_identities_file(binary)


def test_an_empty_identities_file_configures_nothing(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_identities_file(path) == {}


def test_an_identities_file_must_be_a_mapping_of_known_keys(tmp_path: Path) -> None:
    path = tmp_path / "ids.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(RuleFileError, match="must be a mapping with 'identities' and/or 'jwt'"):
        load_identities_file(path)
    path.write_text(identity_yaml() + "colour: red\nshape: round\n")
    with pytest.raises(RuleFileError) as err:
        load_identities_file(path)
    text = str(err.value)
    # Every unknown key is reported, not only the first.
    assert "unknown key 'colour'; expected identities or jwt" in text
    assert "unknown key 'shape'" in text


def test_option_pointing_at_a_missing_file_is_an_options_error(tmp_path: Path) -> None:
    addon = IdentityAddon(FlowStates())
    with taddons.context(addon) as tctx, pytest.raises(exceptions.OptionsError, match="invalid identities file"):
        tctx.configure(addon, portcullis_identities=str(tmp_path / "absent.yaml"))


def test_an_identity_in_both_the_rules_and_the_file_is_refused_at_start(tmp_path: Path) -> None:
    path = tmp_path / "ids.yaml"
    path.write_text(identity_yaml())
    addon = IdentityAddon(FlowStates())
    addon.policy_loaded(compile_policy(rules(identity_yaml()), "rules.yaml"))
    with taddons.context(addon) as tctx, pytest.raises(exceptions.OptionsError, match="'billing-agent' is defined in both rules.yaml and"):
        tctx.configure(addon, portcullis_identities=str(path))


def test_jwt_configured_in_both_sources_is_refused_at_start(tmp_path: Path) -> None:
    key = rsa_key("k1")
    (tmp_path / "jwks.json").write_text(jwks(key))
    jwt_block = f"jwt: {{issuer: '{ISSUER}', audience: {AUDIENCE}, jwks: jwks.json}}\n"
    (tmp_path / "ids.yaml").write_text(jwt_block)
    addon = IdentityAddon(FlowStates())
    with taddons.context(addon) as tctx:
        tctx.configure(addon, portcullis_identities=str(tmp_path / "ids.yaml"))
        assert addon.authenticator.jwt is not None
        with pytest.raises(exceptions.OptionsError, match="jwt is configured in both"):
            addon.policy_loaded(compile_policy(rules(jwt_block), "rules.yaml", base_dir=tmp_path))
        # The refused rules did not replace the previous (empty) ones.
        assert addon.from_rules == {}
        assert addon.rules_name != "rules.yaml"


def test_a_conflicting_reload_of_the_rules_keeps_the_previous_identities(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "ids.yaml"
    path.write_text(identity_yaml("file-agent"))
    addon = IdentityAddon(FlowStates())
    with taddons.context(addon) as tctx:
        tctx.configure(addon, portcullis_identities=str(path))
        addon.policy_loaded(compile_policy(rules(identity_yaml("rules-agent")), "rules.yaml"))
        addon._running = True  # a reload while the gateway runs, not start-up
        with caplog.at_level(logging.ERROR, "portcullis.identity"):
            addon.policy_loaded(compile_policy(rules(identity_yaml("file-agent")), "rules2.yaml"))
        assert "the previous ones stay" in caplog.text
        assert set(addon.authenticator.identities) == {"file-agent", "rules-agent"}
        assert addon.rules_name == "rules.yaml"


def test_a_bad_edit_of_the_identities_file_keeps_the_previous_identities(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "ids.yaml"
    path.write_text(identity_yaml("file-agent"))
    addon = IdentityAddon(FlowStates())
    with taddons.context(addon) as tctx:
        tctx.configure(addon, portcullis_identities=str(path))
        path.write_text("identities: [{name: broken}]\n# a longer file, so the signature changes\n")
        with caplog.at_level(logging.ERROR, "portcullis.identity"):
            assert addon.reload_if_changed() is False
        assert "identities file edit rejected" in caplog.text
        assert addon.from_file["identities"][0].name == "file-agent"
        principal = addon.authenticator.verify_token("file-agent", TOKEN)
        assert principal.name == "file-agent"


def basic(name: str, token: str) -> str:
    return "Basic " + base64.b64encode(f"{name}:{token}".encode()).decode()


def jwt_authenticator(tmp_path: Path, *keys: SigningKey, location: str = "jwks.json") -> Authenticator:
    (tmp_path / "jwks.json").write_text(jwks(*keys))
    policy = compile_policy(rules(f"jwt: {{issuer: '{ISSUER}', audience: {AUDIENCE}, jwks: '{location}'}}\n"),
                            "rules.yaml", base_dir=tmp_path)
    return Authenticator(jwt_config=policy.settings["jwt"])


def failure(authenticator: Authenticator, header: str) -> AuthFailure:
    with pytest.raises(AuthFailure) as err:
        asyncio.run(authenticator.authenticate(header))
    return err.value


def test_a_jwt_to_a_gateway_without_jwt_is_unsupported() -> None:
    authenticator = Authenticator([], None, configured=True)
    assert failure(authenticator, basic("jwt", "a.b.c")).problem == "unsupported_scheme"
    assert failure(authenticator, "Bearer a.b.c").problem == "unsupported_scheme"


def test_a_token_whose_algorithm_does_not_match_its_key_is_refused(tmp_path: Path) -> None:
    rsa = rsa_key("rsa-1")
    authenticator = jwt_authenticator(tmp_path, rsa)
    # Signed with an EC key but naming the RSA key's kid: ES256 is allowed, not for that key.
    forged = SigningKey("rsa-1", "ES256", ec_key().private).token()
    err = failure(authenticator, f"Bearer {forged}")
    assert (err.problem, err.status) == ("unsupported_algorithm", 407)
    assert "does not match its key" in err.reason
    assert asyncio.run(authenticator.authenticate(f"Bearer {rsa.token()}")).name == "jwt-agent"


def test_a_token_with_an_undecodable_payload_is_malformed(tmp_path: Path) -> None:
    rsa = rsa_key("rsa-1")
    authenticator = jwt_authenticator(tmp_path, rsa)
    # Properly signed, but the payload is not a JSON claims set.
    token = jwt.api_jws.encode(b"not json", rsa.private, algorithm="RS256", headers={"kid": "rsa-1"})
    err = failure(authenticator, f"Bearer {token}")
    assert err.problem == "malformed"
    assert err.reason == "the token could not be decoded"


def test_a_token_without_the_identity_claim_is_malformed(tmp_path: Path) -> None:
    rsa = rsa_key("rsa-1")
    authenticator = jwt_authenticator(tmp_path, rsa)
    token = jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 300}, rsa.private,
                       algorithm="RS256", headers={"kid": "rsa-1"})
    err = failure(authenticator, f"Bearer {token}")
    assert err.problem == "malformed"
    assert "'sub' claim" in err.reason


def test_an_unreachable_key_set_is_a_503_not_a_bad_token(caplog: pytest.LogCaptureFixture) -> None:
    policy = compile_policy(rules(
        f"jwt: {{issuer: '{ISSUER}', audience: {AUDIENCE}, jwks: 'https://127.0.0.1:9/jwks.json'}}\n"))
    authenticator = Authenticator(jwt_config=policy.settings["jwt"])
    token = rsa_key("rsa-1").token()
    with caplog.at_level(logging.ERROR, "portcullis.identity"):
        err = failure(authenticator, f"Bearer {token}")
    assert (err.problem, err.status) == ("jwks_unavailable", 503)
    assert "cannot fetch JWKS" in caplog.text


def test_revalidation_follows_the_current_configuration(tmp_path: Path) -> None:
    configured = Authenticator([], None, configured=True)
    with pytest.raises(AuthFailure) as err:
        configured.revalidate(ANONYMOUS_PRINCIPAL)
    assert err.value.problem == "missing"
    assert Authenticator().revalidate(ANONYMOUS_PRINCIPAL) is ANONYMOUS_PRINCIPAL
    # A tunnel opened with a JWT, after the gateway stopped accepting JWTs.
    with pytest.raises(AuthFailure) as err:
        configured.revalidate(Principal("jwt-agent", frozenset(), "jwt", expires=None))
    assert err.value.problem == "unsupported_scheme"


def test_jwks_document_shape_errors_name_the_problem(tmp_path: Path) -> None:
    for content, message in [("not json", "is not JSON"), (json.dumps({"nokeys": 1}), "has no 'keys' list"),
                             (json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0"}, {"use": "enc"}, 5]}),
                              "has no usable key")]:
        (tmp_path / "jwks.json").write_text(content)
        with pytest.raises(RuleFileError) as err:
            compile_policy(rules(f"jwt: {{issuer: '{ISSUER}', audience: {AUDIENCE}, jwks: jwks.json}}\n"),
                           "rules.yaml", base_dir=tmp_path)
        assert message in str(err.value)


JWT_BASE = f"issuer: '{ISSUER}', audience: {AUDIENCE}, jwks: jwks.json"


@pytest.mark.parametrize(("block", "message"), [
    (f"{{{JWT_BASE}, colour: red}}", "unknown key 'colour'; expected one of"),
    (f"{{audience: {AUDIENCE}, jwks: jwks.json}}", "jwt.issuer is required (a non-empty string)"),
    (f"{{{JWT_BASE}, identity_claim: ''}}", "expected a claim name"),
    (f"{{{JWT_BASE}, groups_claim: 5}}", "expected a claim name"),
    (f"{{{JWT_BASE}, algorithms: [HS256]}}", "algorithms must be a list drawn from"),
    (f"{{{JWT_BASE}, algorithms: []}}", "algorithms must be a list drawn from"),
    (f"{{{JWT_BASE}, leeway: -1}}", "expected a number of seconds >= 0"),
    (f"{{{JWT_BASE}, jwks_refresh_interval: true}}", "expected a number of seconds >= 0"),
])
def test_bad_jwt_blocks_are_refused(tmp_path: Path, block: str, message: str) -> None:
    (tmp_path / "jwks.json").write_text(jwks(rsa_key("k1")))
    with pytest.raises(RuleFileError) as err:
        compile_policy(rules(f"jwt: {block}\n"), "rules.yaml", base_dir=tmp_path)
    assert message in str(err.value)
    assert "jwt" in str(err.value)


def test_a_configured_identity_claim_names_the_agent(tmp_path: Path) -> None:
    key = rsa_key("rsa-1")
    (tmp_path / "jwks.json").write_text(jwks(key))
    policy = compile_policy(rules(f"jwt: {{{JWT_BASE}, identity_claim: agent, groups_claim: roles}}\n"),
                            "rules.yaml", base_dir=tmp_path)
    authenticator = Authenticator(jwt_config=policy.settings["jwt"])
    principal = asyncio.run(authenticator.authenticate(f"Bearer {key.token(agent='ci-bot', roles='a b')}"))
    assert (principal.name, principal.groups) == ("ci-bot", frozenset({"a", "b"}))
    # The default claim is no longer read.
    err = failure(authenticator, f"Bearer {key.token()}")
    assert "'agent' claim" in err.reason


def test_a_token_without_a_kid_uses_the_only_key(tmp_path: Path) -> None:
    key = rsa_key("only")
    authenticator = jwt_authenticator(tmp_path, key)
    now = int(time.time())
    token = jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "sub": "no-kid-agent", "exp": now + 300},
                       key.private, algorithm="RS256")
    assert asyncio.run(authenticator.authenticate(f"Bearer {token}")).name == "no-kid-agent"


def test_key_sets_too_large_or_with_unsupported_keys(tmp_path: Path) -> None:
    from addons.identity.jwks import MAX_JWKS_BYTES

    (tmp_path / "jwks.json").write_text(" " * (MAX_JWKS_BYTES + 1))
    with pytest.raises(RuleFileError, match=f"is larger than {MAX_JWKS_BYTES} bytes"):
        compile_policy(rules(f"jwt: {{{JWT_BASE}}}\n"), "rules.yaml", base_dir=tmp_path)
    key = rsa_key("good")
    document = json.loads(jwks(key))
    document["keys"].insert(0, {"kty": "no-such-type", "kid": "odd"})
    (tmp_path / "jwks.json").write_text(json.dumps(document))
    policy = compile_policy(rules(f"jwt: {{{JWT_BASE}}}\n"), "rules.yaml", base_dir=tmp_path)
    assert set(policy.settings["jwt"].keys.keys) == {"good"}  # the unsupported key is skipped
