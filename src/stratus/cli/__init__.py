"""The `stratus` command: one module per top-level command, assembled in `main.py`."""

from stratus.cli.main import main

__all__ = ["main"]
