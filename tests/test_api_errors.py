"""Every error under /api is JSON, routing errors included (review_ui/errors.py).

Before: the app-level handler answered werkzeug's own text for an unknown URL ("The
requested URL was not found on the server. If you entered the URL manually ..."), a
405 lost its Allow header, ``/api`` itself got the HTML error page, and the API
blueprint's 404/405 handlers never ran for routing errors. In-process, through Flask's
test client; test_approvals_api.py::test_api_errors checks the same through a real gateway.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from review_ui import create_app
from review_ui.reviewers import ReviewerStore


@pytest.fixture(scope="module")
def client():
    holds = SimpleNamespace(watchers=[], watch=lambda listener: lambda: None)  # no holds needed here
    return create_app(holds, ReviewerStore(None)).test_client()


@pytest.mark.parametrize("path", ["/api/nope", "/api/flows", "/api/flows/x/nope", "/api", "/api/"])
def test_an_unknown_api_url_is_a_json_404_naming_it(client, path: str):
    response = client.get(path)
    assert (response.status_code, response.content_type) == (404, "application/json")
    assert response.json == {"error": "not_found", "message": f"no API endpoint {path}"}


def test_a_wrong_method_is_a_json_405_with_allow(client):
    response = client.put("/api/pending")
    assert (response.status_code, response.content_type) == (405, "application/json")
    assert response.json == {"error": "method_not_allowed", "message": "PUT is not allowed on /api/pending"}
    assert set(response.headers["Allow"].split(", ")) >= {"GET", "HEAD"}


def test_errors_a_view_raises_keep_their_own_message(client):
    response = client.get("/api/pending")  # no credentials: the view's own 401
    assert response.status_code == 401 and response.json["error"] == "unauthenticated"


def test_pages_outside_the_api_get_the_html_error_page(client):
    for path in ("/nope", "/apis", "/api-docs"):
        response = client.get(path)
        assert response.status_code == 404 and response.content_type.startswith("text/html"), path
        assert b"<!doctype html>" in response.data.lower()
