"""``xray-worker``: one module per command group; each command parses its options, asks
``worker.app`` for the parts, and lets ``worker.cli.common`` turn errors into exit codes."""

from worker.cli.main import cli, main

__all__ = ["cli", "main"]
