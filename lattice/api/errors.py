"""Validation errors that say which document, which field, and why."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldError:
    path: str  # dotted path with list indexes, e.g. "spec.http[0].route[1].weight"
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ValidationError(ValueError):
    """One document failed validation; `errors` lists every offending field."""

    def __init__(self, source: str, errors: list[FieldError]) -> None:
        self.source = source
        self.errors = errors
        lines = "\n".join(f"  - {e}" for e in errors)
        super().__init__(f"{source}: invalid resource\n{lines}")

    def to_dict(self) -> dict:
        return {"source": self.source, "errors": [{"path": e.path, "message": e.message} for e in self.errors]}
