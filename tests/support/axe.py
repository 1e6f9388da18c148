"""axe-core (the accessibility engine) injected into a Playwright page, for the UI tests.

axe-core comes from npm, installed once into the same cache as the Express tests'
packages (tests.support.express.node_modules: ``~/.cache/portcullis-tests/node``). The
review UI's Content-Security-Policy forbids inline and foreign scripts, so the script is
evaluated through the DevTools protocol (``page.evaluate``), which that policy does not
govern; the pages themselves keep their policy.

``serious(page)`` runs axe on the page as it is and returns the violations of impact
serious or critical, as ``[{"id", "impact", "help", "targets"}]``.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from tests.support.express import node_modules

AXE_PACKAGE = "axe-core@4.10"
BLOCKING = ("serious", "critical")


@cache
def axe_source() -> str:
    return (node_modules([AXE_PACKAGE]) / "axe-core" / "axe.min.js").read_text()


def violations(page: Any) -> list[dict[str, Any]]:
    """Every axe violation on ``page`` now (wcag2a/aa and best practices)."""
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        # Evaluated through the DevTools protocol, which the page's CSP does not govern.
        page.evaluate("() => { " + axe_source() + "\n}")
    found = page.evaluate("""async () => {
        const result = await axe.run(document, {resultTypes: ['violations']});
        return result.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
            targets: v.nodes.slice(0, 5).map(n => n.target.join(' '))}));
    }""")
    return found


def serious(page: Any) -> list[dict[str, Any]]:
    """The violations of impact serious or critical (what the tests forbid)."""
    return [v for v in violations(page) if v["impact"] in BLOCKING]
