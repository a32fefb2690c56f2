"""Build step only (all metadata lives in pyproject.toml): copy the top-level `recipes/` and
`data/` folders into the package as `fine_tune_cli/_bundled/`, so a wheel carries the
built-in recipes and the demo data. They stay at the top of the repo, where teams read them;
an editable install reads them from the checkout (see `fine_tune_cli.recipe.bundled_root`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

BUNDLED = ("recipes", "data")


class BuildPyWithBundled(build_py):
    """build_py plus the bundled recipes and demo data (skipped for editable installs)."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        root = Path(__file__).resolve().parent
        for name in BUNDLED:
            target = Path(self.build_lib) / "fine_tune_cli" / "_bundled" / name
            shutil.copytree(
                root / name,
                target,
                dirs_exist_ok=True,
                ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"),
            )


setup(cmdclass={"build_py": BuildPyWithBundled})
