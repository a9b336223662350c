#!/usr/bin/env bash
# Installs the npm packages the gateway tests drive (a real MCP server and a third-party MCP client)
# into tools/node/node_modules (git-ignored), from tools/node/package-lock.json. Idempotent and
# serialised with a lock, so parallel test processes install once.
set -euo pipefail
cd "$(dirname "$0")/../node"
exec 9>.install.lock
flock -w 600 9
if [[ -x node_modules/.bin/mcp-server-filesystem && -x node_modules/.bin/mcp-inspector-cli && -x node_modules/.bin/mcp-server-everything \
      && node_modules/.package-lock.json -nt package-lock.json ]]; then
  exit 0
fi
command -v npm >/dev/null || { echo "npm is required (node/npm are part of a fresh machine)" >&2; exit 1; }
npm ci --no-audit --no-fund --loglevel=error >&2
