"""
What setup.cfg cannot say: the wheel carries the job launch helper, a C
program compiled with the system's ``cc`` as the wheel is built.

The wheel is therefore tagged for its platform. It holds no Python
extension, so any Python 3 there can use it: ``py3-none-<platform>``. An
editable install compiles the helper beside ``exec.c`` instead, where the
package is imported from.
"""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path
from types import ModuleType

from setuptools import setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution
from setuptools.errors import CompileError

HERE = Path(__file__).resolve().parent
HELPER = Path("jobworker", "linux", "jobworker-exec")


def helper_builder() -> ModuleType:
    """``jobworker.linux.build`` alone: the package's dependencies are not
    installed while it is built."""
    path = HERE / "jobworker" / "linux" / "build.py"
    spec = importlib.util.spec_from_file_location("jobworker_build", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildPyWithHelper(build_py):
    """Python files as usual, and the compiled helper beside them."""

    def run(self) -> None:
        super().run()
        builder = helper_builder()
        try:
            if self.editable_mode:
                builder.build()
            else:
                builder.compile_helper(builder.SOURCE, Path(self.build_lib) / HELPER)
        except (builder.HelperMissing, subprocess.CalledProcessError) as e:
            raise CompileError(f"cannot build the job launch helper: {e}") from e

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = list(super().get_outputs(include_bytecode))
        if not self.editable_mode:
            outputs.append(str(Path(self.build_lib) / HELPER))
        return outputs


class PlatformWheel(bdist_wheel):
    """Tagged for the platform the helper was compiled for, any Python 3."""

    def get_tag(self) -> tuple[str, str, str]:
        platform = super().get_tag()[2]
        return "py3", "none", platform


class HelperDistribution(Distribution):
    """Not pure Python: the helper is a native binary."""

    def has_ext_modules(self) -> bool:
        return True


setup(
    distclass=HelperDistribution,
    cmdclass={"build_py": BuildPyWithHelper, "bdist_wheel": PlatformWheel},
)
