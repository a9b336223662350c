"""`decider gateway mcp`: an MCP proxy that asks decider before every tools/call (SPEC §8).

A shell package: it talks to decider only through the public gRPC API (decider.v1 stubs).
"""

from decider.gateway.config import GatewayConfig, GatewayConfigError, load_config, parse_config

__all__ = ["GatewayConfig", "GatewayConfigError", "load_config", "parse_config"]
