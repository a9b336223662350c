"""The gRPC shell around the engine and the store."""

from decider.server.app import ServerConfig, run, start_server

__all__ = ["ServerConfig", "run", "start_server"]
