"""Reviewer sessions are revocable on the server: logout and expiry end every copy of the cookie.

Before: the session was the signed cookie alone, so a cookie copied before logout stayed
valid for 12 h. Now the cookie carries a session id the server must still know.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from review_ui import create_app
from review_ui.reviewers import ReviewerStore, add_reviewer
from review_ui.session_store import MemorySessionStore
from tests.support.hold_desk import shared_desk
from tests.support.review import PASSWORD_SUFFIX, ReviewRig
from tests.support.review_login import COOKIE, csrf_of, sign_in


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def reviewers(tmp_path_factory: pytest.TempPathFactory) -> ReviewerStore:
    path = tmp_path_factory.mktemp("sessions") / "reviewers.yaml"
    add_reviewer(path, "alice", ["finance-leads"], "alice" + PASSWORD_SUFFIX, token=False)
    return ReviewerStore(path)


def make_app(reviewers: ReviewerStore, store: MemorySessionStore | None = None):
    return create_app(shared_desk(), reviewers, session_store=store)


def log_in(app) -> tuple[object, str]:
    """(a signed-in test client, its session cookie value)."""
    client = app.test_client()
    token = csrf_of(client.get("/login").text)
    response = client.post("/login", data={"name": "alice", "password": "alice" + PASSWORD_SUFFIX,
                                           "csrf_token": token})
    assert response.status_code == 302, response.text
    return client, client.get_cookie(COOKIE).value


def replay(app, cookie: str):
    """A fresh client that only has the captured cookie: (page response, API response)."""
    client = app.test_client()
    client.set_cookie(COOKIE, cookie)
    return client.get("/"), client.get("/api/pending")


def test_a_cookie_replayed_after_logout_is_refused(reviewers):
    app = make_app(reviewers)
    client, cookie = log_in(app)
    page, _ = replay(app, cookie)
    assert page.status_code == 200  # the copy works while the session lives
    token = csrf_of(client.get("/").text)
    assert client.post("/logout", data={"csrf_token": token}).status_code == 302
    page, api = replay(app, cookie)
    assert page.status_code == 302 and "/login" in page.headers["Location"]
    assert api.status_code == 401 and api.json["error"] == "unauthenticated"


def test_signing_in_again_ends_the_previous_session_of_that_browser(reviewers):
    app = make_app(reviewers)
    client, first = log_in(app)
    token = csrf_of(client.get("/login").text)
    client.post("/login", data={"name": "alice", "password": "alice" + PASSWORD_SUFFIX, "csrf_token": token})
    assert client.get_cookie(COOKIE).value != first
    assert replay(app, first)[0].status_code == 302


def test_an_idle_session_expires_on_the_server(reviewers):
    clock = Clock()
    store = MemorySessionStore(clock=clock)
    app = make_app(reviewers, store)
    _, cookie = log_in(app)
    clock.now += store.idle - 1
    assert replay(app, cookie)[0].status_code == 200  # used just in time: the idle timer restarts
    clock.now += store.idle
    page, api = replay(app, cookie)
    assert page.status_code == 302 and api.status_code == 401
    assert len(store) == 0


def test_a_session_in_constant_use_still_ends_after_its_lifetime(reviewers):
    clock = Clock()
    store = MemorySessionStore(clock=clock)
    app = make_app(reviewers, store)
    _, cookie = log_in(app)
    signed_in = clock.now
    while clock.now + store.idle / 2 < signed_in + store.lifetime:
        clock.now += store.idle / 2
        assert replay(app, cookie)[0].status_code == 200
    clock.now = signed_in + store.lifetime
    page, api = replay(app, cookie)
    assert page.status_code == 302 and api.status_code == 401


def test_a_new_password_or_removal_from_the_reviewers_file_ends_the_session(tmp_path):
    path = tmp_path / "reviewers.yaml"
    add_reviewer(path, "alice", ["finance-leads"], "alice" + PASSWORD_SUFFIX, token=False)
    store = MemorySessionStore()
    app = make_app(ReviewerStore(path), store)
    _, cookie = log_in(app)
    assert replay(app, cookie)[0].status_code == 200
    add_reviewer(path, "alice", ["finance-leads"], "a-brand-new-password", token=False, replace=True)
    assert replay(app, cookie)[0].status_code == 302
    assert len(store) == 0  # ended, not merely refused: setting the old password back won't revive it


def test_the_memory_store_is_bounded():
    store = MemorySessionStore(max_sessions=3)
    ids = [store.create("alice") for _ in range(5)]
    assert len(store) == 3
    assert store.get(ids[0]) is None and store.get(ids[-1]) is not None
    assert store.delete_reviewer("alice") == 3 and len(store) == 0


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, confdir) -> Iterator[ReviewRig]:
    rig = ReviewRig(tmp_path_factory.mktemp("revocation"), confdir)
    yield rig
    rig.stop()


def test_real_gateway_logout_revokes_a_captured_cookie(rig: ReviewRig):
    cookie, token = sign_in(rig.ui_url, "bob", "bob" + PASSWORD_SUFFIX)
    raw = requests.Session()
    raw.trust_env = False

    def replayed(path: str) -> requests.Response:
        return raw.get(rig.ui_url + path, headers={"Cookie": cookie}, allow_redirects=False, timeout=10)

    assert replayed("/").status_code == 200 and replayed("/api/pending").status_code == 200
    logout = raw.post(rig.ui_url + "/logout", data={"csrf_token": token}, headers={"Cookie": cookie},
                      allow_redirects=False, timeout=10)
    assert logout.status_code == 302
    page, api = replayed("/"), replayed("/api/pending")
    assert page.status_code == 302 and "/login" in page.headers["Location"]
    assert api.status_code == 401 and api.json()["error"] == "unauthenticated"
