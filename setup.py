"""Build hook: everything is configured in pyproject.toml; this adds one package to what it finds.

``[tool.setuptools.packages.find]`` finds ``livegen`` and its subpackages on disk. The shipped
mappings live outside the package tree (the repository's ``mappings/`` folder, which
``[tool.setuptools.package-dir]`` maps to ``livegen.mappings``), so no finder can discover them:
setuptools applies pyproject.toml over the arguments of ``setup()``, hence the package is added
after the configuration has been read. tests/test_packaging.py builds a wheel and checks that it
carries every livegen module and the mappings.
"""

from __future__ import annotations

from setuptools import setup
from setuptools.dist import Distribution

SHIPPED_MAPPINGS = "livegen.mappings"


class _Distribution(Distribution):
    def parse_config_files(self, *args: object, **kwargs: object) -> None:
        super().parse_config_files(*args, **kwargs)
        if SHIPPED_MAPPINGS not in (self.packages or []):
            self.packages = [*(self.packages or []), SHIPPED_MAPPINGS]


setup(distclass=_Distribution)
