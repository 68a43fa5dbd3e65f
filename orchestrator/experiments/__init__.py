"""Reproducible experiments, each a module with ``run(...) -> dict`` and ``main(argv=None)``."""
