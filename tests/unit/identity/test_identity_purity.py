"""lattice.identity stays pure: no IO, no clock of its own, no other lattice package.

The allowlist of what it may import, and the calls it may not make, are the translator's rules
too (tests/imports.py); tests/unit/test_layers.py applies them to both packages."""

from __future__ import annotations

from imports import PURE_ALLOWED, impurities


def test_identity_imports_only_its_allowlist_and_reads_no_clock():
    problems = impurities("identity")
    assert not problems, "identity must stay pure:\n" + "\n".join(problems)


def test_identity_may_not_import_another_lattice_package():
    assert {a for a in PURE_ALLOWED["identity"] if a.startswith("lattice")} == {"lattice.identity"}
