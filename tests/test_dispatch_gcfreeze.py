"""addons/core/gcfreeze.py: once running, what startup built is frozen out of the GC's scans."""

from __future__ import annotations

import asyncio
import gc

import pytest

from addons.core.gcfreeze import ENV, GcFreezeAddon


@pytest.fixture
def unfrozen():
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_running_freezes_the_objects_alive_once(unfrozen, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    startup = [object() for _ in range(10)], {"rules": [1, 2]}  # something startup built
    addon = GcFreezeAddon()
    calls = []

    async def main():
        addon.running()
        assert addon.frozen == 0  # not before the loop's next turn: READY comes first
        await asyncio.sleep(0)
        assert addon.frozen > 0 and gc.get_freeze_count() > 0
        assert not any(o is startup for o in gc.get_objects())  # no longer in any scanned generation
        later = [[]]  # created after: still collected as usual
        assert any(o is later for o in gc.get_objects())
        monkeypatch.setattr(gc, "freeze", lambda: calls.append(1))
        addon.running()  # once only
        await asyncio.sleep(0)

    asyncio.run(main())
    assert calls == []


def test_portcullis_gc_freeze_0_leaves_the_collector_alone(unfrozen, monkeypatch):
    monkeypatch.setenv(ENV, "0")
    addon = GcFreezeAddon()
    addon.running()
    assert addon.frozen == 0 and gc.get_freeze_count() == 0


def test_it_is_the_last_portcullis_addon(monkeypatch):
    from addons import portcullis

    monkeypatch.setenv("PORTCULLIS_RECORDER", "thread")
    members = portcullis.members()
    assert isinstance(members[-1], GcFreezeAddon)
