"""decider — a policy decision point for AI agents."""

__version__ = "0.1.0"
