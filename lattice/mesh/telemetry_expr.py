"""Tag override expressions (Istio's CEL, the subset Lattice evaluates) for mesh and translate code.

The parser and evaluator live in `lattice.api.telemetry_expr`: the API layer validates tag
overrides with them at apply time and imports nothing from the layers above it, so the one
implementation sits there and this module names it where telemetry is resolved and used.
"""

from lattice.api.telemetry_expr import ATTRIBUTES, UNKNOWN, Expr, evaluate, parse

__all__ = ["ATTRIBUTES", "UNKNOWN", "Expr", "evaluate", "parse"]
