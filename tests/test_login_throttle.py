"""Failed logins are throttled per (reviewer, address), so alice's typos never lock out bob.

Before: five failures from 127.0.0.1 (where every local reviewer comes from) locked
every reviewer out for 60 s. Now a (name, address) pair gets LOGIN_ATTEMPTS failures
and an address ADDRESS_ATTEMPTS failures over all names (against spraying names).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from review_ui import auth, create_app
from review_ui.reviewers import ReviewerStore, add_reviewer
from tests.support.hold_desk import idle_desk
from tests.support.review import PASSWORD_SUFFIX, ReviewRig
from tests.support.review_login import post_login


@pytest.fixture
def limits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fresh limiters per test (they are process-wide in the app)."""
    monkeypatch.setattr(auth, "pair_limit", auth.RateLimit(auth.LOGIN_ATTEMPTS, auth.LOGIN_WINDOW_S))
    monkeypatch.setattr(auth, "address_limit", auth.RateLimit(auth.ADDRESS_ATTEMPTS, auth.LOGIN_WINDOW_S))


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("throttle") / "reviewers.yaml"
    for name in ("alice", "bob"):
        add_reviewer(path, name, ["finance-leads"], name + PASSWORD_SUFFIX, token=False)
    return create_app(idle_desk(), ReviewerStore(path))


def attempt(app, name: str, password: str, address: str = "127.0.0.1") -> int:
    client = app.test_client()
    environ = {"REMOTE_ADDR": address}
    page = client.get("/login", environ_base=environ)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    return client.post("/login", data={"name": name, "password": password, "csrf_token": token},
                       environ_base=environ).status_code


def test_one_reviewers_failures_do_not_lock_out_another(app, limits):
    for _ in range(auth.LOGIN_ATTEMPTS):
        assert attempt(app, "alice", "typo") == 401
    assert attempt(app, "alice", "alice" + PASSWORD_SUFFIX) == 429  # alice, from here, waits
    assert attempt(app, "bob", "bob" + PASSWORD_SUFFIX) == 302  # bob signs in from the same address
    assert attempt(app, "alice", "alice" + PASSWORD_SUFFIX, address="10.0.0.7") == 302  # alice elsewhere


def test_spraying_names_from_one_address_hits_the_address_cap(app, limits, monkeypatch):
    cap = 8  # the real cap (ADDRESS_ATTEMPTS) works the same; a smaller one keeps this fast
    monkeypatch.setattr(auth, "address_limit", auth.RateLimit(cap, auth.LOGIN_WINDOW_S))
    for i in range(cap):
        assert attempt(app, f"guess-{i}", "x", address="10.0.0.9") == 401
    assert attempt(app, "bob", "bob" + PASSWORD_SUFFIX, address="10.0.0.9") == 429
    assert attempt(app, "bob", "bob" + PASSWORD_SUFFIX) == 302  # other addresses are unaffected


def test_a_successful_login_clears_that_pairs_failures(app, limits):
    for _ in range(auth.LOGIN_ATTEMPTS - 1):
        assert attempt(app, "alice", "typo") == 401
    assert attempt(app, "alice", "alice" + PASSWORD_SUFFIX) == 302
    for _ in range(auth.LOGIN_ATTEMPTS - 1):
        assert attempt(app, "alice", "typo") == 401
    assert attempt(app, "alice", "alice" + PASSWORD_SUFFIX) == 302


def test_the_limiter_forgets_keys_whose_failures_expired():
    limit = auth.RateLimit(2, window=0.0)
    limit.fail("a")
    assert not limit.blocked("a")
    assert limit._failures == {}


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, confdir) -> Iterator[ReviewRig]:
    rig = ReviewRig(tmp_path_factory.mktemp("throttle-gw"), confdir)
    yield rig
    rig.stop()


def test_real_gateway_alices_typos_do_not_lock_out_bob(rig: ReviewRig):
    for _ in range(auth.LOGIN_ATTEMPTS):
        assert post_login(rig.ui_url, "alice", "typo").status_code == 401
    assert post_login(rig.ui_url, "alice", "alice" + PASSWORD_SUFFIX).status_code == 429
    response = post_login(rig.ui_url, "bob", "bob" + PASSWORD_SUFFIX)
    assert response.status_code == 302 and response.cookies.get("portcullis_session")
