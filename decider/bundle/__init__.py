"""Bundles: compile policy models into an immutable, indexed Bundle; build, sign and read .bundle archives."""
