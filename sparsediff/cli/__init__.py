"""The command line: one Typer app, its commands grouped by what they do (one module per group)."""

from sparsediff.cli import bench, evaluate, generate, search  # noqa: F401  (each registers its commands)
from sparsediff.cli.common import app

__all__ = ["app"]
