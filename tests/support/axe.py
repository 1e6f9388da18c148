"""axe-core (the accessibility engine) injected into a Playwright page, for the UI tests.

axe-core comes from npm, installed once into the same cache as the Express tests'
packages (tests.support.express.node_modules: ``~/.cache/portcullis-tests/node``). The
review UI's Content-Security-Policy forbids inline and foreign scripts, so the script is
evaluated through the DevTools protocol (``page.evaluate``), which that policy does not
govern; the pages themselves keep their policy.

``serious(page)`` runs axe on the page as it is and returns the violations of impact
serious or critical, as ``[{"id", "impact", "help", "targets"}]``; it leaves out the
rules whose impact is minor or moderate, which cannot report one (13% of axe's time on
the review pages). axe stays in the page once injected: a page run at several screen
sizes (``page.set_viewport_size``) pays the injection once.
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


def violations(page: Any, at_least: str | None = None) -> list[dict[str, Any]]:
    """Every axe violation on ``page`` now (wcag2a/aa and best practices), or with
    ``at_least`` an impact, those of that impact or worse."""
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        # Evaluated through the DevTools protocol, which the page's CSP does not govern.
        page.evaluate("() => { " + axe_source() + "\n}")
    found = page.evaluate("""async (atLeast) => {
        const impacts = ['minor', 'moderate', 'serious', 'critical'];
        // axe gives each violation of a rule that has an impact that impact
        // (_finalizeRuleResult in axe.js): a rule whose impact is below the bar cannot
        // report one at or above it, so it is not run. Rules without one still are.
        const off = atLeast === null ? [] : axe._audit.rules
            .filter(r => r.impact && impacts.indexOf(r.impact) < impacts.indexOf(atLeast)).map(r => r.id);
        const result = await axe.run(document, {resultTypes: ['violations'],
            rules: Object.fromEntries(off.map(id => [id, {enabled: false}]))});
        return result.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
            targets: v.nodes.slice(0, 5).map(n => n.target.join(' '))}));
    }""", at_least)
    return found


def serious(page: Any) -> list[dict[str, Any]]:
    """The violations of impact serious or critical (what the tests forbid)."""
    return [v for v in violations(page, at_least=BLOCKING[0]) if v["impact"] in BLOCKING]
