"""Lattice: a service mesh you install with pip."""
