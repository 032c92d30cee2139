"""`python -m sparsediff ...` (and `accelerate launch -m sparsediff batch ...`): the CLI."""

from sparsediff.cli import app

app()
