"""Signing in to the review UI with its login form, from a raw HTTP client (no browser).

The session cookie is Secure, which ``requests`` will not send over http://127.0.0.1:
the cookie is carried by hand, exactly as an attacker replaying a stolen one would.
"""

from __future__ import annotations

import re

import requests

COOKIE = "portcullis_session"
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(html: str) -> str:
    match = _CSRF.search(html)
    assert match, "no CSRF token on the page"
    return match.group(1)


def post_login(ui_url: str, name: str, password: str) -> requests.Response:
    """One login attempt through the form (a fresh client, no redirects followed)."""
    with requests.Session() as http:
        http.trust_env = False
        page = http.get(ui_url + "/login", timeout=10)
        return http.post(ui_url + "/login", allow_redirects=False, timeout=10,
                         data={"name": name, "password": password, "csrf_token": csrf_of(page.text)},
                         headers={"Cookie": f"{COOKIE}={page.cookies.get(COOKIE)}"})


def sign_in(ui_url: str, name: str, password: str) -> tuple[str, str]:
    """A signed-in session: (Cookie header value, the CSRF token of its pages)."""
    response = post_login(ui_url, name, password)
    assert response.status_code in (302, 303), response.text
    cookie = f"{COOKIE}={response.cookies.get(COOKIE)}"
    page = requests.get(ui_url + "/", headers={"Cookie": cookie}, timeout=10, proxies={"http": "", "https": ""})
    return cookie, csrf_of(page.text)
