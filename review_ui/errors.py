"""JSON errors for the API (and for any blueprint that answers machines).

Every error under ``/api`` is JSON, ``{"error": code, "message": ...}``, whatever raised it.
That takes an app-level handler (:func:`register`): routing errors — no such URL, a
method the URL does not take — are raised before Flask picks a blueprint, so a
blueprint's ``errorhandler(404)`` never sees them and a client would get werkzeug's
HTML page. Pages elsewhere get the UI's own error page.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, jsonify, render_template, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed

API_PREFIX = "/api"


def api_error(status: int, code: str, message: str, **extra: Any) -> tuple[Response, int]:
    """``{"error": code, "message": message, ...}`` with ``status``; use as a view's return."""
    return jsonify({"error": code, "message": message, **extra}), status


def is_api_path(path: str) -> bool:
    return path == API_PREFIX or path.startswith(API_PREFIX + "/")


def _api_http_error(exc: HTTPException) -> tuple[Response, int]:
    status = exc.code or 500
    code = (exc.name or "error").lower().replace(" ", "_")
    message = exc.description or ""
    if exc is request.routing_exception:  # werkzeug's text speaks of "the URL you entered"
        message = (f"{request.method} is not allowed on {request.path}" if isinstance(exc, MethodNotAllowed)
                   else f"no API endpoint {request.path}")
    response, status = api_error(status, code, message)
    if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
        response.headers["Allow"] = ", ".join(sorted(exc.valid_methods))  # RFC 9110: a 405 says what is
    return response, status


def http_error(exc: HTTPException) -> Any:
    """JSON under /api (routing errors included), the UI's error page elsewhere."""
    if is_api_path(request.path):
        return _api_http_error(exc)
    return render_template("error.html", error=exc), exc.code or 500


def register(app: Flask) -> None:
    """Answer every HTTP error of ``app`` through :func:`http_error`."""
    app.register_error_handler(HTTPException, http_error)
