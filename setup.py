"""Build hook: the wheel ships rules/ (the default rules and the examples) as package data.

The rules stay where a user of a clone expects them, at the top of the repository
(`portcullis check rules/default.yaml`), and the wheel carries a copy inside the
`gateway` package, `gateway/shipped_rules/`, where gateway/settings.py finds them when
there is no clone around (a `pip install .`, not editable). A copy made at build time
rather than a second tree in git, so the two cannot drift apart; not a top-level `rules`
package, whose generic name would collide in site-packages. Editable installs copy
nothing: the clone's rules/ is read directly.

Everything else about the package is declared in pyproject.toml.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
RULES = ROOT / "rules"
SHIPPED = Path("gateway") / "shipped_rules"  # keep in step with gateway/settings.py


class BuildWithRules(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib) / SHIPPED
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(RULES, target, ignore=shutil.ignore_patterns("*.duckdb*", "__pycache__"))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        target = Path(self.build_lib) / SHIPPED
        shipped = [str(p) for p in target.rglob("*") if p.is_file()] if target.is_dir() else []
        return [*super().get_outputs(include_bytecode), *shipped]


setup(cmdclass={"build_py": BuildWithRules})
