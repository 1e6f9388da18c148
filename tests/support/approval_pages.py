"""A reviewer logged in to the review UI with plain `requests` (approval page tests).

`requests` never sends Secure cookies over http (browsers do for 127.0.0.1), so the
session cookie is carried by hand. For page-level checks without a browser.
"""

from __future__ import annotations

import re
from typing import Any

import requests

from tests.support.review import PASSWORD_SUFFIX, ReviewRig


class LoggedIn:
    def __init__(self, rig: ReviewRig, name: str) -> None:
        self.rig = rig
        self.http = requests.Session()
        self.http.trust_env = False
        page = self.http.get(rig.ui_url + "/login", timeout=10)
        cookie = page.headers["Set-Cookie"].split(";", 1)[0]
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
        done = self.http.post(rig.ui_url + "/login", timeout=10, allow_redirects=False,
                              data={"name": name, "password": name + PASSWORD_SUFFIX, "csrf_token": token},
                              headers={"Cookie": cookie})
        assert done.status_code == 302, done.text
        self.cookie = done.headers["Set-Cookie"].split(";", 1)[0]

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.http.get(self.rig.ui_url + path, headers={"Cookie": self.cookie}, timeout=10, **kwargs)

    def csrf(self, path: str) -> str:
        """The CSRF token of the form on the page at ``path``."""
        return re.search(r'name="csrf_token" value="([^"]+)"', self.get(path).text).group(1)

    def post(self, path: str, data: dict[str, str], **kwargs: Any) -> requests.Response:
        return self.http.post(self.rig.ui_url + path, data=data, timeout=10, allow_redirects=False,
                              headers={"Cookie": self.cookie, "Origin": self.rig.ui_url}, **kwargs)
