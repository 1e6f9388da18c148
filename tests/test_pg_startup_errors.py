"""A start that fails elsewhere after PostgreSQL state opened shows the real cause.

mitmproxy rolls a failed option update back by calling ``configure`` again with the old
values; the state addon answered that rollback with "portcullis_state cannot change
while the gateway runs", which replaced the real error the operator needed to see.
"""

from __future__ import annotations

import pytest
from mitmproxy import exceptions
from mitmproxy.test import taddons

from addons.holds.pgaddon import SharedStateAddon


class OpenedStore:
    """Stands in for a PgHoldStore that opened fine (no server needed for the rollback)."""

    gateway_id = "g1"
    pool = None

    def __init__(self) -> None:
        self.dsn: str | None = None

    @property
    def shared(self) -> bool:
        return self.dsn is not None

    def open(self, dsn: str) -> None:
        self.dsn = dsn


def test_rollback_of_a_failed_start_reraises_the_real_cause(monkeypatch):
    monkeypatch.setattr("addons.holds.pgaddon.shared_secret", lambda pool, key: b"k")
    store = OpenedStore()
    addon = SharedStateAddon(states=None, store=store)  # type: ignore[arg-type]
    with taddons.context(addon) as tctx:
        with (pytest.raises(exceptions.OptionsError) as caught,
              tctx.options.rollback({"portcullis_state"}, reraise=True)):
            tctx.options.update(portcullis_state="postgresql://p:s3cret@127.0.0.1/db")
            raise exceptions.OptionsError("real cause: rules file broken")
        assert "real cause" in str(caught.value)


def test_a_change_while_running_is_still_refused(monkeypatch):
    monkeypatch.setattr("addons.holds.pgaddon.shared_secret", lambda pool, key: b"k")
    store = OpenedStore()
    addon = SharedStateAddon(states=None, store=store)  # type: ignore[arg-type]
    with taddons.context(addon) as tctx:
        tctx.configure(addon, portcullis_state="postgresql://p:s3cret@127.0.0.1/db")
        addon.started = True
        with pytest.raises(exceptions.OptionsError, match="cannot change while the gateway runs"):
            tctx.configure(addon, portcullis_state="memory")
