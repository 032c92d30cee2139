"""`python -m sparsediff.cli ...`: the CLI (batch workers start this way)."""

from sparsediff.cli import app

app()
