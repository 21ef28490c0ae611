"""Data flows one way: lower layers never import higher ones (STYLE.md, "Shape")."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parents[2] / "lattice"
# Each package and the packages it may import from Lattice.
ALLOWED = {
    "api": set(),
    "store": set(),
    "identity": set(),
    "mesh": {"api"},
    "translate": {"api", "mesh"},
    "xds": {"translate"},
    "registry": {"api", "mesh", "store"},
    "server": {"api", "store", "registry", "mesh", "translate", "xds", "identity"},
    "agent": {"api", "mesh", "translate", "identity"},
    "cli": {"api", "server", "agent", "mesh", "translate", "demo"},
    "demo": {"server", "agent", "cli"},
}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = (
            [node.module]
            if isinstance(node, ast.ImportFrom) and node.module
            else [a.name for a in node.names]
            if isinstance(node, ast.Import)
            else []
        )
        found |= {n.split(".")[1] for n in names if n.startswith("lattice.") and len(n.split(".")) > 1}
    return found


def test_layers_import_only_downward():
    problems = []
    for package, allowed in ALLOWED.items():
        for path in (ROOT / package).rglob("*.py"):
            bad = _imports(path) - allowed - {package}
            if bad:
                problems.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert not problems, "\n".join(problems)


def test_every_package_opens_with_a_docstring():
    for init in ROOT.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and "placeholder" not in doc, f"{init} needs a docstring naming its parts and rules"


def test_translate_is_pure():
    for path in (ROOT / "translate").glob("*.py"):
        source = path.read_text()
        for forbidden in ("async ", "await ", "import time", "import asyncio", "open(", "datetime"):
            assert forbidden not in source, f"{path.name} uses {forbidden!r}: the translator must stay sans-IO"
