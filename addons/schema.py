"""The whole rules schema, assembled: the policy's own keys and every package's.

Packages add rules keys by registering them when their module is imported (``upstreams:``
in upstreams, ``identities:`` in identity, ``hold:`` in holds, ``mask:`` in masking,
``sql:``/``graphql:`` in querylang, ``mcp:`` in mcp, ...). The policy engine sits below
all of them and must not import them: it used to load them by name at run time, a cycle
(policy -> holds.spec -> policy) no import check could see. So the assembly happens here,
above the packages, in plain imports that tests/test_layering.py checks.

Import this module before compiling rules (the composition root, the CLI's commands, the
docs generator and the tests do): :func:`addons.policy.engine.compile_policy` refuses to
run on an incomplete schema rather than reject a valid file with "unknown key".
"""

from __future__ import annotations

# In this order: it is the order of the keys in the docs, `explain` and error messages.
# isort: off
from addons.upstreams import addon as _upstreams
from addons.identity import addon as _identity
from addons.credentials import addon as _credentials
from addons.holds import spec as _holds
from addons.masking import spec as _masking
from addons.querylang import rules as _querylang
from addons.mcp import rules as _mcp
from addons.policy import engine
# isort: on

#: The modules whose import registers rules keys, for docs and tests that list them.
EXTENSION_MODULES: tuple[str, ...] = tuple(module.__name__ for module in (
    _upstreams, _identity, _credentials, _holds, _masking, _querylang, _mcp))

engine.schema_assembled(EXTENSION_MODULES)
