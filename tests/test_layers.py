"""Honest layers: every import in the five packages points down (DESIGN.md), and no module
imports another module's private name. Read from the source (ast), imports inside functions too."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import REPO

PACKAGES = ("data", "annotation", "training", "evaluation", "serving")

# Floors from the ground up: (floor, module-name prefixes). A module belongs to the floor of its
# longest matching prefix; a prefix holds the module of that name and everything below it, so
# `serving.cli` is both a module and a package of command modules.
FLOORS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("runtime", ("serving.runtime",)),
    ("data", ("data",)),
    ("annotation", ("annotation",)),
    ("training", ("training",)),
    ("evaluation", ("evaluation",)),
    ("export", ("serving.export", "serving.config", "serving.model_card")),
    ("export", ("serving.export_anonymizer", "serving.anonymizer_card")),
    ("roof", ("serving.cli", "serving.params")),
    # The `serving` package itself holds only its docstring.
    ("package", ("serving",)),
)
# What each floor may import besides itself. annotation and training share a floor and import
# neither each other; the roof (the command line, the root schema) is imported by nothing.
MAY_IMPORT: dict[str, set[str]] = {
    "package": set(),
    "runtime": set(),
    "data": {"runtime"},
    "annotation": {"data", "runtime"},
    "training": {"data", "runtime"},
    "evaluation": {"training", "annotation", "data", "runtime"},
    "export": {"evaluation", "training", "annotation", "data", "runtime"},
    "roof": {"export", "evaluation", "training", "annotation", "data", "runtime"},
}


@dataclass(frozen=True)
class Import:
    path: Path
    line: int
    importer: str  # dotted module name of the file
    module: str  # dotted name of the imported module
    names: tuple[str, ...]  # names taken from it (`from module import a, b`); empty for `import`


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_files() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (REPO / package).rglob("*.py"))


def is_module(name: str) -> bool:
    path = REPO.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports(path: Path) -> Iterator[Import]:
    """Every import of a project module in the file, at any depth, relative ones resolved."""
    importer = module_name(path)
    package = importer if path.name == "__init__.py" else importer.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PACKAGES:
                    yield Import(path, node.lineno, importer, alias.name, ())
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            if base.split(".")[0] not in PACKAGES:
                continue
            names = tuple(a.name for a in node.names)
            # `from serving import runtime` imports the module serving.runtime.
            submodules = [n for n in names if is_module(f"{base}.{n}")]
            for n in submodules:
                yield Import(path, node.lineno, importer, f"{base}.{n}", ())
            rest = tuple(n for n in names if n not in submodules)
            if rest:
                yield Import(path, node.lineno, importer, base, rest)


def floor(module: str) -> str | None:
    matches = [
        (len(prefix), name)
        for name, prefixes in FLOORS
        for prefix in prefixes
        if module == prefix or module.startswith(prefix + ".")
    ]
    return max(matches)[1] if matches else None


def where(imp: Import) -> str:
    return f"{imp.path.relative_to(REPO)}:{imp.line}"


def test_every_module_has_a_floor() -> None:
    lost = [module_name(p) for p in project_files() if floor(module_name(p)) is None]
    assert not lost, f"modules on no floor of tests/test_layers.py: {lost}"


def test_every_import_points_down() -> None:
    forbidden = []
    for path in project_files():
        for imp in imports(path):
            low, high = floor(imp.module), floor(imp.importer)
            if low != high and low not in MAY_IMPORT[high]:
                forbidden.append(
                    f"{where(imp)}: {imp.importer} -> {imp.module} ({high} may not import {low})"
                )
    assert not forbidden, "imports that point up or sideways:\n" + "\n".join(forbidden)


def test_no_module_imports_another_modules_private_name() -> None:
    private = [
        f"{where(imp)}: {imp.importer} imports {name} from {imp.module}"
        for path in project_files()
        for imp in imports(path)
        for name in imp.names
        if name.startswith("_") and not name.startswith("__") and imp.module != imp.importer
    ]
    assert not private, "private names imported from another module:\n" + "\n".join(private)
