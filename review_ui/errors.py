"""JSON errors for the API (and for any blueprint that answers machines)."""

from __future__ import annotations

from typing import Any

from flask import Response, jsonify


def api_error(status: int, code: str, message: str, **extra: Any) -> tuple[Response, int]:
    """``{"error": code, "message": message, ...}`` with ``status``; use as a view's return."""
    return jsonify({"error": code, "message": message, **extra}), status
