"""Hooks that coding agents run before and after each tool call (Claude Code: claude_code.py)."""
