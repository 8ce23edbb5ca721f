"""
The package layout rule, read from the source with ``ast`` (nothing of
jobworker is imported): which part of jobworker may import which, no module
over 400 lines, and a docstring on every module.

Every form of import counts: ``import jobworker.x``, ``from jobworker.x
import y``, ``from jobworker import x``, relative imports, and imports inside
functions or under ``if TYPE_CHECKING``. Imports by string (``importlib``)
are not seen.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

# fmt: off
# A part of jobworker (and everything under it), and the parts of jobworker it
# may import. A module is judged by the longest part that holds it; one that
# no part here holds (tls.py, pki.py, tap.py, __init__.py) may import any.
MAY_IMPORT: dict[str, tuple[str, ...]] = {
    "jobworker.wire":   (),
    "jobworker.linux":  ("jobworker.linux",),
    "jobworker.jobs":   ("jobworker.jobs", "jobworker.linux", "jobworker.wire"),
    "jobworker.client": ("jobworker.client", "jobworker.wire", "jobworker.tls"),
    "jobworker.cli":    ("jobworker.cli", "jobworker.client", "jobworker.wire",
                         "jobworker.tls", "jobworker.pki"),
    "jobworker.auth":   ("jobworker.auth", "jobworker.jobs", "jobworker.wire"),
}
# A part of jobworker, and the parts it must not import (the rest it may).
MUST_NOT_IMPORT: dict[str, tuple[str, ...]] = {
    "jobworker.http":   ("jobworker.client", "jobworker.cli"),
}
# fmt: on
MAX_LINES = 400
SOURCE = Path(__file__).parents[2]  # holds the jobworker package


@dataclass(frozen=True)
class Module:
    """One ``.py`` file of the package, parsed."""

    name: str  # dotted, e.g. "jobworker.jobs.spec"
    path: Path  # relative to the source root, for messages
    is_package: bool  # an __init__.py
    text: str
    tree: ast.Module


@dataclass(frozen=True)
class Import:
    """A module of jobworker that ``module`` imports, and where."""

    module: Module
    line: int
    imported: str


def modules(root: Path) -> Iterator[Module]:
    """Every ``.py`` under ``root/jobworker``, in a stable order."""
    for path in sorted((root / "jobworker").rglob("*.py")):
        relative = path.relative_to(root)
        parts = list(relative.with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        text = path.read_text()
        tree = ast.parse(text, filename=str(relative))
        yield Module(".".join(parts), relative, is_package, text, tree)


def within(name: str, part: str) -> bool:
    return name == part or name.startswith(part + ".")


def imports(module: Module, root: Path) -> Iterator[Import]:
    """The modules of jobworker ``module`` imports, wherever in it: each
    once per line."""
    seen: set[tuple[int, str]] = set()
    for node in ast.walk(module.tree):
        if not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        for imported in imported_names(module, node, root):
            if within(imported, "jobworker") and (node.lineno, imported) not in seen:
                seen.add((node.lineno, imported))
                yield Import(module, node.lineno, imported)


def imported_names(
    module: Module, node: ast.Import | ast.ImportFrom, root: Path
) -> Iterator[str]:
    """The dotted names an import statement imports."""
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
        return
    base = absolute(module, node)
    for alias in node.names:
        # "from jobworker import wire" imports the module jobworker.wire;
        # "from jobworker import Api" imports from jobworker itself.
        candidate = f"{base}.{alias.name}"
        yield candidate if is_module(candidate, root) else base


def absolute(module: Module, node: ast.ImportFrom) -> str:
    """The dotted name a (possibly relative) ``from ... import`` reads from."""
    if node.level == 0:
        return node.module or ""
    package = module.name.split(".")
    if not module.is_package:
        package.pop()
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def is_module(name: str, root: Path) -> bool:
    path = root.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


@dataclass(frozen=True)
class Rule:
    """What ``part`` may import: only ``allowed``, or (``allowed`` None)
    anything but ``forbidden``."""

    part: str
    allowed: tuple[str, ...] | None
    forbidden: tuple[str, ...] = ()

    def forbids(self, imported: str) -> bool:
        if self.allowed is None:
            return any(within(imported, f) for f in self.forbidden)
        return not any(within(imported, a) for a in self.allowed)

    def __str__(self) -> str:
        if self.allowed is None:
            return f"{self.part} must not import {', '.join(self.forbidden)}"
        if not self.allowed:
            return f"{self.part} may import nothing of jobworker"
        return f"{self.part} may import only {', '.join(self.allowed)}"


RULES = [Rule(part, allowed) for part, allowed in MAY_IMPORT.items()] + [
    Rule(part, None, forbidden) for part, forbidden in MUST_NOT_IMPORT.items()
]


def rule_for(name: str) -> Rule | None:
    """The rule of module ``name``: that of the longest part holding it."""
    rules = [r for r in RULES if within(name, r.part)]
    return max(rules, key=lambda r: len(r.part)) if rules else None


def import_violations(root: Path) -> list[str]:
    found: list[str] = []
    for module in modules(root):
        rule = rule_for(module.name)
        if rule is None:
            continue
        found.extend(
            f"{module.path}:{imp.line}: imports {imp.imported} ({rule})"
            for imp in imports(module, root)
            if rule.forbids(imp.imported)
        )
    return found


def size_violations(root: Path) -> list[str]:
    return [
        f"{m.path}: {lines} lines (at most {MAX_LINES})"
        for m in modules(root)
        if (lines := m.text.count("\n")) > MAX_LINES
    ]


def docstring_violations(root: Path) -> list[str]:
    return [
        f"{m.path}:1: no module docstring"
        for m in modules(root)
        if not (ast.get_docstring(m.tree) or "").strip()
    ]


def report(violations: list[str]) -> str:
    return "\n".join(["", *violations])


def test_imports_follow_the_layout_rule() -> None:
    violations = import_violations(SOURCE)
    assert violations == [], report(violations)


def test_no_module_is_over_the_line_limit() -> None:
    violations = size_violations(SOURCE)
    assert violations == [], report(violations)


def test_every_module_has_a_docstring() -> None:
    violations = docstring_violations(SOURCE)
    assert violations == [], report(violations)


def test_the_real_tree_is_read() -> None:
    """The checks above see the package: its modules and their imports."""
    found = list(modules(SOURCE))
    assert {"jobworker.wire", "jobworker.jobs.spec"} <= {m.name for m in found}
    imported = {i.imported for m in found for i in imports(m, SOURCE)}
    assert {"jobworker.wire", "jobworker.jobs.spec"} <= imported


# A small tree with one planted violation of each kind, and imports the rule
# allows next to them: module -> source.
PLANTED = {
    "jobworker/__init__.py": '"""Top."""\nfrom jobworker.http.api import Api\n',
    "jobworker/tls.py": '"""TLS."""\n',
    "jobworker/pki.py": '"""PKI."""\n',
    "jobworker/wire.py": '"""Wire."""\nimport os\nimport jobworker.tls\n',
    "jobworker/linux/__init__.py": '"""Linux."""\nimport jobworker\n',
    "jobworker/linux/proc.py": (
        '"""Proc."""\nfrom . import cgroups\ndef f():\n    from jobworker import wire\n'
    ),
    "jobworker/linux/cgroups/__init__.py": (
        '"""Cgroups."""\nfrom .. import proc\nfrom ... import tls\n'
    ),
    "jobworker/jobs/__init__.py": '"""Jobs."""\n',
    "jobworker/jobs/spec.py": (
        '"""Spec."""\n'
        "from typing import TYPE_CHECKING\n"
        "from ..wire import Stream\n"
        "from jobworker.linux.cgroups import Cgroup\n"
        "if TYPE_CHECKING:\n"
        "    from ..http.api import Api\n"
    ),
    "jobworker/jobs/service.py": (
        '"""Service."""\nfrom jobworker import JobSpec\nfrom .spec import X\n'
    ),
    "jobworker/client/__init__.py": (
        '"""Client."""\nfrom jobworker import tls\nfrom .. import pki\n'
    ),
    "jobworker/cli/__init__.py": (
        '"""CLI."""\n'
        "from jobworker.client import Client\n"
        "from jobworker import pki\n"
        "import jobworker.http.api as api\n"
    ),
    "jobworker/http/__init__.py": '"""HTTP."""\n',
    "jobworker/http/api.py": (
        '"""API."""\n'
        "from jobworker.jobs.spec import X\n"
        "from jobworker.auth import policy\n"
        "from jobworker.cli import main\n"
    ),
    "jobworker/auth/__init__.py": '"""Auth."""\n',
    "jobworker/auth/policy.py": (
        '"""Policy."""\n'
        "from jobworker.jobs.spec import X\n"
        "from jobworker.wire import Y\n"
        "from jobworker.client import Z\n"
    ),
    "jobworker/big.py": '"""Big."""\n' + "x = 1\n" * MAX_LINES,
    "jobworker/bare.py": "x = 1\n",
}


@pytest.fixture
def planted(tmp_path: Path) -> Path:
    for name, source in PLANTED.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return tmp_path


def test_checker_finds_each_planted_import(planted: Path) -> None:
    """Each form of import is seen and judged by the rule of its part; the
    allowed ones beside them are not reported."""
    assert import_violations(planted) == [
        "jobworker/auth/policy.py:4: imports jobworker.client"
        " (jobworker.auth may import only jobworker.auth, jobworker.jobs,"
        " jobworker.wire)",
        "jobworker/cli/__init__.py:4: imports jobworker.http.api"
        " (jobworker.cli may import only jobworker.cli, jobworker.client,"
        " jobworker.wire, jobworker.tls, jobworker.pki)",
        "jobworker/client/__init__.py:3: imports jobworker.pki"
        " (jobworker.client may import only jobworker.client, jobworker.wire,"
        " jobworker.tls)",
        "jobworker/http/api.py:4: imports jobworker.cli"
        " (jobworker.http must not import jobworker.client, jobworker.cli)",
        "jobworker/jobs/service.py:2: imports jobworker"
        " (jobworker.jobs may import only jobworker.jobs, jobworker.linux,"
        " jobworker.wire)",
        "jobworker/jobs/spec.py:6: imports jobworker.http.api"
        " (jobworker.jobs may import only jobworker.jobs, jobworker.linux,"
        " jobworker.wire)",
        "jobworker/linux/__init__.py:2: imports jobworker"
        " (jobworker.linux may import only jobworker.linux)",
        "jobworker/linux/cgroups/__init__.py:3: imports jobworker.tls"
        " (jobworker.linux may import only jobworker.linux)",
        "jobworker/linux/proc.py:4: imports jobworker.wire"
        " (jobworker.linux may import only jobworker.linux)",
        "jobworker/wire.py:3: imports jobworker.tls"
        " (jobworker.wire may import nothing of jobworker)",
    ]


def test_checker_finds_the_long_module_and_the_bare_one(planted: Path) -> None:
    assert size_violations(planted) == [
        f"jobworker/big.py: {MAX_LINES + 1} lines (at most {MAX_LINES})"
    ]
    assert docstring_violations(planted) == ["jobworker/bare.py:1: no module docstring"]


@pytest.mark.parametrize(
    ("name", "part"),
    [
        ("jobworker.cli", "jobworker.cli"),
        ("jobworker.client", "jobworker.client"),
        ("jobworker.linux.cgroups", "jobworker.linux"),
        ("jobworker.wire", "jobworker.wire"),
        ("jobworker.wirex", None),
        ("jobworker.tls", None),
    ],
)
def test_each_module_is_governed_by_its_own_part(name: str, part: str | None) -> None:
    """A part holds its modules only: jobworker.cli is not jobworker.client's."""
    rule = rule_for(name)
    assert (rule.part if rule else None) == part
