"""The `decider` command line: a thin shell over the engine, the store and the server."""

from decider.cli.main import main

__all__ = ["main"]
