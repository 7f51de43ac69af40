"""Reproducible installs: the lock files pin, with hashes, every dependency pyproject.toml declares (at a
version it allows), and every third-party package the code imports is declared."""

import ast
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# The packages the wheel ships (pyproject's find.include): their imports need runtime dependencies only.
SHIPPED = tuple(p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"])
LOCAL_PACKAGES = {*SHIPPED, "tests", "bench"}
PROJECT = PYPROJECT["project"]
RUNTIME = [Requirement(text) for text in PROJECT["dependencies"]]
DEV = [Requirement(text) for text in PROJECT["optional-dependencies"]["dev"]]
# The bench's peers (Dramatiq, FastStream): in the dev lock (`make venv`), never in the image.
BENCH = [Requirement(text) for text in PROJECT["optional-dependencies"]["bench"]]
STALE = "run `make lock` (regenerates requirements.lock and requirements-dev.lock from pyproject.toml)"


def pins(name: str) -> dict[str, str]:
    """Canonical name -> version of every requirement in a pip-compile lock; each must be `==` with hashes."""
    found: dict[str, str] = {}
    hashes: dict[str, int] = {}
    current = None
    for line in (ROOT / name).read_text().splitlines():
        if re.match(r"^[A-Za-z0-9]", line):
            match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", line)
            assert match, f"{name}: {line!r} is not pinned with =="
            current = canonicalize_name(match.group(1))
            found[current], hashes[current] = match.group(2), 0
        elif current and re.match(r"^\s+--hash=sha256:[0-9a-f]{64}", line):
            hashes[current] += 1
    assert found and all(hashes.values()), f"{name}: requirements without hashes: {STALE}"
    return found


def applies(requirement: Requirement) -> bool:
    return requirement.marker is None or any(
        requirement.marker.evaluate(default_environment() | {"extra": extra}) for extra in ("dev", "bench")
    )


@pytest.mark.parametrize(
    ("lock", "declared"), [("requirements.lock", RUNTIME), ("requirements-dev.lock", RUNTIME + DEV + BENCH)]
)
def test_the_lock_pins_every_declared_dependency_at_an_allowed_version(lock: str, declared) -> None:
    pinned = pins(lock)
    for requirement in filter(applies, declared):
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{requirement} is not in {lock}: {STALE}"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"{lock} pins {name}=={pinned[name]}, outside {requirement}: {STALE}"
        )


def test_the_two_locks_agree_on_what_they_share() -> None:
    runtime, dev = pins("requirements.lock"), pins("requirements-dev.lock")
    assert {name: dev.get(name) for name in runtime} == runtime


def test_the_runtime_lock_holds_no_dev_tool() -> None:
    """The image installs requirements.lock: no test runner, linter or generator in production."""
    tools = {
        "pytest",
        "ruff",
        "hypothesis",
        "datamodel-code-generator",
        "pip-tools",
        "py-spy",
        "testcontainers",
    }
    assert tools <= {canonicalize_name(r.name) for r in DEV}
    assert sorted(tools & set(pins("requirements.lock"))) == []
    assert sorted({canonicalize_name(r.name) for r in BENCH} & set(pins("requirements.lock"))) == []


def third_party_imports(folders: tuple[str, ...]) -> dict[str, set[str]]:
    """Top-level module -> files importing it, for every import (module level or inside functions)."""
    found: dict[str, set[str]] = {}
    for folder in folders:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules = [node.module]
                else:
                    continue
                for module in modules:
                    top = module.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in LOCAL_PACKAGES:
                        found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def undeclared(folders: tuple[str, ...], declared: list[Requirement]) -> list[str]:
    names = {canonicalize_name(r.name) for r in declared}
    distributions = metadata.packages_distributions()
    problems = []
    for module, files in sorted(third_party_imports(folders).items()):
        providers = {canonicalize_name(d) for d in distributions.get(module, [module])}
        if not providers & names:
            problems.append(f"{module} (from {sorted(providers)}) imported by {sorted(files)[:3]}")
    return problems


def test_every_package_the_shipped_code_imports_is_a_runtime_dependency() -> None:
    assert undeclared(SHIPPED, RUNTIME) == []


def test_every_package_the_tests_and_bench_import_is_declared() -> None:
    assert undeclared(("tests", "bench"), RUNTIME + DEV + BENCH) == []
