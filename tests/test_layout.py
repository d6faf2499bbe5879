"""Packaging and layering guards (see docs/ARCHITECTURE.md, "Layers")."""

from __future__ import annotations

import ast
import importlib.util
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PACKAGE_DIRS: dict[str, str] = PYPROJECT["tool"]["setuptools"]["package-dir"]

# module prefix -> imports it must not make
FORBIDDEN = {
    "dmsfs.ctl": ["dmsfs.daemon", "lmdb", "pyfuse3", "boto3", "trio", "dmsfs.index",
                  "dmsfs.repo", "dmsfs.vfs", "dmsfs.store"],
    "dmsfs.daemon": ["dmsfs.ctl", "lmdb", "boto3"],
    "dmsfs": ["dmsfs.daemon", "dmsfs.ctl", "pyfuse3"],
}
ONLY_IN = {"lmdb": "dmsfs.index", "boto3": "dmsfs.store.s3", "pyfuse3": "dmsfs.daemon"}


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg, folder in PACKAGE_DIRS.items():
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([pkg, *parts])
            if pkg == "dmsfs" and parts and parts[0] in ("daemon", "ctl"):
                continue
            mods[name] = path
    return mods


def _imports(name: str, path: Path) -> set[str]:
    out = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out |= {f"{mod}.{a.name}" for a in node.names}
    return out


def test_every_package_is_listed() -> None:
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    found = set()
    for pkg, folder in PACKAGE_DIRS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            if pkg == "dmsfs" and rel.parts and rel.parts[0] in ("daemon", "ctl"):
                continue
            found.add(".".join([pkg, *rel.parts]))
    assert found == listed


def test_no_generic_top_level_names() -> None:
    assert importlib.util.find_spec("daemon") is None
    assert importlib.util.find_spec("ctl") is None


def test_layering() -> None:
    bad = []
    for name, path in _modules().items():
        imports = _imports(name, path)
        rules = next(v for k, v in FORBIDDEN.items() if name == k or name.startswith(k + "."))
        for imp in imports:
            for banned in rules:
                if imp == banned or imp.startswith(banned + "."):
                    bad.append(f"{name} imports {imp}")
            for lib, home in ONLY_IN.items():
                if (imp == lib or imp.startswith(lib + ".")) and not name.startswith(home):
                    bad.append(f"{name} imports {lib} (only {home} may)")
    assert not bad, "\n".join(sorted(set(bad)))
