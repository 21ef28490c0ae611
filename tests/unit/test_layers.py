"""Data flows one way: lower layers never import higher ones, nothing imports in a circle, and
the pure layers stay pure (STYLE.md, "Shape"). Imports are resolved as Python resolves them
(tests/imports.py): relative ones, `from lattice import x`, those inside functions and those
under TYPE_CHECKING all count."""

from __future__ import annotations

import ast

import pytest
from imports import ROOT, Import, cycles, imports_of, impurities, lattice_graph, modules, package_of

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
    "demo": {"api", "server", "agent"},
    "console": set(),  # the web console's static page; served by server/console.py
}


def _crossings(module: str) -> list[Import]:
    package = package_of(module)
    return [
        i
        for i in imports_of(module)
        if i.target.split(".")[0] == "lattice" and package_of(i.target) not in ALLOWED[package] | {package}
    ]


def test_every_package_is_placed_in_the_layers():
    packages = {package_of(m) for m in modules()} - {""}
    assert packages == set(ALLOWED), "a new package needs its place in ALLOWED"


def test_layers_import_only_downward():
    problems = [
        f"{modules()[m].relative_to(ROOT)}:{i.line} imports {i.target} ({i.where})"
        for m in sorted(modules())
        if package_of(m)
        for i in _crossings(m)
    ]
    assert not problems, "\n".join(problems)


def test_no_import_cycles():
    """Not even through an import inside a function or under TYPE_CHECKING: a cycle deferred so is
    still two modules that cannot be understood (or loaded) one without the other."""
    found = cycles(lattice_graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


@pytest.mark.parametrize("package", ["translate", "identity"])
def test_pure_packages_stay_pure(package):
    problems = impurities(package)
    assert not problems, f"lattice.{package} must stay pure:\n" + "\n".join(problems)


def test_every_package_opens_with_a_docstring():
    for init in ROOT.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and "placeholder" not in doc, f"{init} needs a docstring naming its parts and rules"


# --- the checks themselves catch what they must (each on a made-up module) -----------------------


def _check(tmp_path, monkeypatch, files: dict[str, str]):
    import imports

    root = tmp_path / "lattice"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    monkeypatch.setattr(imports, "ROOT", root)
    imports.modules.cache_clear()
    imports.imports_of.cache_clear()
    try:
        return lattice_graph(), {m: imports_of(m) for m in modules()}
    finally:
        imports.modules.cache_clear()
        imports.imports_of.cache_clear()


def test_relative_package_and_deferred_imports_are_resolved(tmp_path, monkeypatch):
    graph, found = _check(
        tmp_path,
        monkeypatch,
        {
            "__init__.py": "",
            "server/__init__.py": "",
            "server/x.py": "",
            "translate/__init__.py": "",
            "translate/a.py": "from ..server import x\n",
            "translate/b.py": "from lattice import server\n",
            "translate/c.py": "def f():\n    import lattice.server.x\n",
            "translate/d.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import a\n",
        },
    )
    assert graph["lattice.translate.a"] == {"lattice.server.x"}
    assert graph["lattice.translate.b"] == {"lattice.server"}
    assert [(i.target, i.where) for i in found["lattice.translate.c"]] == [("lattice.server.x", "function")]
    assert ("lattice.translate.a", "TYPE_CHECKING") in [(i.target, i.where) for i in found["lattice.translate.d"]]


def test_a_cycle_through_a_function_level_import_is_found(tmp_path, monkeypatch):
    graph, _ = _check(
        tmp_path,
        monkeypatch,
        {
            "mesh/__init__.py": "",
            "mesh/a.py": "from lattice.mesh import b\n",
            "mesh/b.py": "def f():\n    from . import a\n",
        },
    )
    assert cycles(graph) == [["lattice.mesh.a", "lattice.mesh.b"]]
