"""Build hook: everything is configured in pyproject.toml; this adds one package to what it finds.

``[tool.setuptools.packages.find]`` finds ``livegen`` and its subpackages on disk. The shipped
mappings live outside the package tree (the repository's ``mappings/`` folder, which
``[tool.setuptools.package-dir]`` maps to ``livegen.mappings``), so no finder can discover them:
setuptools applies pyproject.toml over the arguments of ``setup()``, hence the package is added
after the configuration has been read. tests/test_packaging.py builds a wheel and checks that it
carries every livegen module and the mappings.

It also builds ``livegen/output/_rtclock.c`` (the exact stream clock and master safety around
rtmixer's callback) as a plain shared library: no Python API in it, loaded with cffi.dlopen by
livegen/output/exact_mixer.py. The build is optional: without a C compiler the install goes on
and the player runs rtmixer's callback directly (launches a few frames off, no master safety on
that path; the status says which, ``audio.clock``).
"""

from __future__ import annotations

from setuptools import Extension, setup
from setuptools.dist import Distribution

SHIPPED_MAPPINGS = "livegen.mappings"


class _Distribution(Distribution):
    def parse_config_files(self, *args: object, **kwargs: object) -> None:
        super().parse_config_files(*args, **kwargs)
        if SHIPPED_MAPPINGS not in (self.packages or []):
            self.packages = [*(self.packages or []), SHIPPED_MAPPINGS]


RTCLOCK = Extension("livegen.output._rtclock", sources=["livegen/output/_rtclock.c"], optional=True,
                    extra_compile_args=["-O2"])

setup(distclass=_Distribution, ext_modules=[RTCLOCK])
