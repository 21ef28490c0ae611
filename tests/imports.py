"""Lattice's imports as Python resolves them, for the layer, cycle and purity tests.

Every `import` and `from ... import` anywhere in a module counts: at the top, inside functions,
under `if TYPE_CHECKING:`, relative (`from ..server import x`) or through a package
(`from lattice import server`). A name imported from a package is an edge to its submodule when
one of that name exists, else to the package's `__init__`.

Purity is an allowlist, not a list of bad words: a pure package may import only the modules named
here (the standard library's computation-only modules, the protobuf and crypto libraries it
builds on, and the Lattice layers below it), and may not call what reads the outside world.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).parents[1] / "lattice"

# Standard library modules that compute and nothing else: no files, sockets, processes, clock.
PURE_STDLIB = frozenset(
    {
        "__future__",
        "base64",
        "binascii",
        "collections",
        "collections.abc",
        "dataclasses",
        "enum",
        "functools",
        "hashlib",
        "hmac",
        "ipaddress",
        "itertools",
        "json",
        "math",
        "operator",
        "re",
        "string",
        "types",
        "typing",
        "urllib.parse",
    }
)
# What each pure package may import besides PURE_STDLIB: prefixes (a module or any below it).
PURE_ALLOWED = {
    # The translator: Envoy's messages out (and xDS's own, such as TypedStruct), the snapshot and
    # the API's types in.
    "translate": PURE_STDLIB
    | {"envoy", "xds.type", "google.protobuf", "lattice.api", "lattice.mesh", "lattice.translate"},
    # The CA's pure core: dates are values (the clock is injected), `secrets` is where tokens and
    # serial numbers come from (as key generation, it draws on the OS's randomness, not its state).
    "identity": PURE_STDLIB | {"cryptography", "datetime", "secrets", "lattice.identity"},
}
# Calls that read or change the outside world (or the clock), forbidden in a pure package.
IMPURE_CALLS = frozenset({"open", "print", "input", "exec", "eval", "__import__", "breakpoint"})
IMPURE_ATTRIBUTES = frozenset({"now", "utcnow", "today", "time", "monotonic", "perf_counter", "sleep"})


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, e.g. "lattice.translate.lds"
    target: str  # what it imports, resolved: "lattice.mesh.model", "envoy.config.core.v3", ...
    line: int
    where: str  # "top", "function" or "TYPE_CHECKING"


@cache
def modules() -> dict[str, Path]:
    """Every Lattice module by its dotted name (packages by their `__init__.py`)."""
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def package_of(module: str) -> str:
    """The top-level Lattice package a module belongs to ("translate" for lattice.translate.lds)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _known(name: str) -> str:
    """The Lattice module `name` is, or the nearest package above it that exists."""
    known = modules()
    while name not in known and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def _resolve_from(node: ast.ImportFrom, module: str) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not modules()[module].name == "__init__.py":
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


class _Visitor(ast.NodeVisitor):
    def __init__(self, module: str) -> None:
        self.module = module
        self.found: list[Import] = []
        self._where = ["top"]

    def visit_FunctionDef(self, node: ast.AST) -> None:
        self._where.append("function")
        self.generic_visit(node)
        self._where.pop()

    visit_AsyncFunctionDef = visit_Lambda = visit_FunctionDef

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        guarded = (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
            isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
        )
        if guarded:
            self._where.append("TYPE_CHECKING")
            for child in node.body:
                self.visit(child)
            self._where.pop()
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = _resolve_from(node, self.module)
        for alias in node.names:
            full = f"{base}.{alias.name}"
            self._add(full if base.split(".")[0] == "lattice" and full in modules() else base, node)

    def _add(self, target: str, node: ast.stmt) -> None:
        if target.split(".")[0] == "lattice":
            target = _known(target)
        self.found.append(Import(self.module, target, node.lineno, self._where[-1]))


@cache
def imports_of(module: str) -> tuple[Import, ...]:
    visitor = _Visitor(module)
    visitor.visit(ast.parse(modules()[module].read_text()))
    return tuple(visitor.found)


def lattice_graph() -> dict[str, set[str]]:
    """Module -> the Lattice modules it imports (every kind of import; itself left out)."""
    return {m: {i.target for i in imports_of(m) if i.target.split(".")[0] == "lattice"} - {m} for m in modules()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            advanced = False
            for succ in successors:
                if succ not in graph:
                    continue
                if succ not in index:
                    index[succ] = low[succ] = len(index)
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(graph[succ]))))
                    advanced = True
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def impurities(package: str) -> list[str]:
    """Where a pure package imports outside its allowlist, calls out, awaits, or keeps globals."""
    allowed = PURE_ALLOWED[package]
    problems = []
    for module, path in sorted(modules().items()):
        if package_of(module) != package:
            continue
        for i in imports_of(module):
            if not any(i.target == a or i.target.startswith(a + ".") for a in allowed):
                problems.append(f"{path.name}:{i.line} imports {i.target}, outside {package}'s allowlist")
        for node in ast.walk(ast.parse(path.read_text())):
            problems += [f"{path.name}:{node.lineno} {why}" for why in _impure(node)]
    return problems


def _impure(node: ast.AST) -> list[str]:
    if isinstance(node, (ast.AsyncFunctionDef, ast.Await, ast.AsyncFor, ast.AsyncWith)):
        return ["awaits (async)"]
    if isinstance(node, (ast.Global, ast.Nonlocal)):
        return [f"rebinds {', '.join(node.names)} ({type(node).__name__.lower()} state)"]
    if isinstance(node, ast.Call):
        f = node.func
        if isinstance(f, ast.Name) and f.id in IMPURE_CALLS:
            return [f"calls {f.id}()"]
        if isinstance(f, ast.Attribute) and f.attr in IMPURE_ATTRIBUTES:
            return [f"calls .{f.attr}() (a clock or a wait)"]
    return []
