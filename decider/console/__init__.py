"""The operations console: a web UI over decider's gRPC API (`decider console`). It holds no state
of its own: every page is read from decider with the logged-in user's own token, so roles apply
exactly as on the API, and the session lives in an encrypted cookie."""

from decider.console.config import ConsoleConfig

__all__ = ["ConsoleConfig"]
