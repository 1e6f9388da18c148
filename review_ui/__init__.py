"""The Portcullis review UI: a Flask app served from inside the gateway process.

``create_app(holds, reviewers)`` builds it for a :class:`~addons.holds.desk.HoldDesk`;
``close_app(app)`` undoes what it attached to the desk (its live feed's subscription),
so that rebuilding the app on a reconfigure leaves no stale listener behind. Pages and the JSON API are blueprints
listed in ``BLUEPRINT_MODULES``; a module may define ``NAV = [(endpoint, label)]`` to
appear in the navigation of the shared base layout. New views: add a module with a
blueprint ``bp``, protect its views with ``review_ui.auth.login_required`` (pages) or
``api_auth_required`` (JSON), answer machine errors with ``review_ui.errors.api_error``.
"""

from __future__ import annotations

import importlib
import secrets
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from flask import Flask, g, redirect, request, url_for

from review_ui import display, errors
from review_ui.errors import api_error
from review_ui.highlight import highlight_sql
from review_ui.holds.api import public
from review_ui.holds.live import Broker
from review_ui.reviewers import ReviewerStore
from review_ui.services import Services
from review_ui.session_store import MemorySessionStore, SessionStore

if TYPE_CHECKING:
    from addons.holds.desk import HoldDesk

#: Blueprint modules, in navigation order. Later issues append theirs here.
BLUEPRINT_MODULES = [
    "review_ui.auth",
    "review_ui.holds.queue",
    "review_ui.holds.review",
    "review_ui.holds.decisions",
    "review_ui.holds.grants",
    "review_ui.slack",
    "review_ui.holds.api",
    "review_ui.audit.flows",
    "review_ui.audit.sessions",
    "review_ui.audit.sql",
    "review_ui.audit.flow_detail",
    "review_ui.audit.api",
]

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def create_app(
    holds: HoldDesk,
    reviewers: ReviewerStore,
    *,
    recorder: Callable[[], Any] = lambda: None,
    replayer: Callable[[], Any] = lambda: None,
    secret_key: bytes | None = None,
    allowed_hosts: Iterable[str] = (),
    sse_lifetime: float = 300.0,
    blueprint_modules: Iterable[str] = (),
    session_store: SessionStore | None = None,
) -> Flask:
    """The review UI for the holds behind ``holds``. Call :func:`close_app` when done with it.

    ``allowed_hosts``: acceptable ``Host`` headers (e.g. ``127.0.0.1:8081``); anything
    else is refused, which defeats DNS-rebinding pages. Empty: no check (tests).
    ``session_store``: where reviewer sessions live (default: this process's memory).
    """
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=secret_key or secrets.token_bytes(32),
        SESSION_COOKIE_NAME="portcullis_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SECURE=True,  # browsers accept Secure cookies from http://127.0.0.1
        SESSION_COOKIE_SAMESITE="Strict",
        PERMANENT_SESSION_LIFETIME=12 * 3600,
        MAX_CONTENT_LENGTH=256 * 1024,
        TEMPLATES_AUTO_RELOAD=False,
    )
    broker = Broker()
    app.extensions["portcullis"] = Services(holds, reviewers, broker, recorder, sse_lifetime, replayer,
                                            unwatch=holds.watch(lambda kind, data: broker.publish(kind, public(data))))
    # Reviewer sessions live on the server (logout revokes them); in memory unless given one.
    app.extensions["portcullis_sessions"] = session_store if session_store is not None else MemorySessionStore()
    hosts = {h.lower() for h in allowed_hosts}
    nav: list[tuple[str, str]] = []
    for name in [*BLUEPRINT_MODULES, *blueprint_modules]:
        module = importlib.import_module(name)
        app.register_blueprint(module.bp)
        nav.extend(getattr(module, "NAV", []))

    from review_ui.auth import csrf_token, current_actor

    @app.context_processor
    def globals_for_templates() -> dict[str, Any]:
        return {"nav": nav, "csrf_token": csrf_token, "reviewer": current_actor(), "now": time.time,
                "events_since": g.get("events_since", 0)}

    app.jinja_env.filters["ago"] = _ago
    app.jinja_env.filters["sql"] = highlight_sql
    display.register(app)
    app.jinja_env.filters["clock"] = display.when  # UTC to the second, like the audit pages

    @app.get("/favicon.ico")
    def favicon() -> Any:
        """Browsers ask for it on every first load; the icon is the stylesheet's SVG."""
        return redirect(url_for("static", filename="favicon.svg"), 301)

    @app.before_request
    def check_host() -> Any:
        if hosts and request.host.lower() not in hosts:
            return api_error(421, "wrong_host", "this review UI does not answer to that host name")
        # Taken before the view reads any state: the page's live feed resumes from here,
        # so nothing that happens while the page loads is missed.
        g.events_since = broker.seq
        return None

    @app.after_request
    def security_headers(response: Any) -> Any:
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    errors.register(app)  # JSON under /api, routing errors included; the error page elsewhere
    return app


def close_app(app: Flask) -> None:
    """Detach ``app`` from its holds desk (the live feed stops); safe to call twice."""
    services: Services = app.extensions["portcullis"]
    services.unwatch()
    services.unwatch = lambda: None


def _ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
