"""lattice.identity stays pure: no IO, no clock of its own, no other lattice package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[3] / "lattice" / "identity"
FORBIDDEN = (
    "open(",
    "datetime.now",
    "datetime.utcnow",
    "time.time",
    "import time",
    "import os",
    "import socket",
    "import asyncio",
    "pathlib",
    "async ",
    "await ",
)


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("*.py")), ids=lambda p: p.name)
def test_module_is_pure(path: Path) -> None:
    source = path.read_text()
    for forbidden in FORBIDDEN:
        assert forbidden not in source, f"{path.name} uses {forbidden!r}: identity must stay pure"
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lattice."):
            assert node.module.startswith("lattice.identity"), f"{path.name} imports {node.module}"
