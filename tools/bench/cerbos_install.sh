#!/usr/bin/env bash
# Install the real Cerbos PDP for the bench from the npm registry (the only place this project's
# machines can get it: @cerbos/cerbos-linux-x64 ships the prebuilt server binary inside the package).
#
#   tools/bench/cerbos_install.sh [VERSION]      # default 0.55.0; prints the binary's absolute path
#
# Idempotent: a second run with the same version touches nothing and just prints the path.
# Everything lands in tools/bench/.cerbos/<version>/ (git-ignored), so versions can sit side by side.
set -euo pipefail

version="${1:-${CERBOS_VERSION:-0.55.0}}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
prefix="${here}/.cerbos/${version}"
pkg="@cerbos/cerbos-linux-x64"
bin="${prefix}/node_modules/${pkg}/cerbos-linux-x64"

case "$(uname -s)-$(uname -m)" in
  Linux-x86_64) ;;
  *) echo "cerbos_install.sh: only linux-x64 is packaged here, not $(uname -s)-$(uname -m)" >&2; exit 2 ;;
esac

# The version check guards against a half-finished earlier install or a hand-edited tree.
if [[ -x "${bin}" ]] && "${bin}" --version 2>/dev/null | head -n1 | grep -qx "${version}"; then
  echo "${bin}"
  exit 0
fi

command -v npm >/dev/null || { echo "cerbos_install.sh: npm is required (apt-get install npm)" >&2; exit 2; }
mkdir -p "${prefix}"
# --prefix keeps it out of the repo's own node_modules (if any) and out of the global npm tree;
# stdout goes to stderr so that the only line on stdout is the path callers read.
npm install --prefix "${prefix}" --no-audit --no-fund --no-save --loglevel=error \
  "${pkg}@${version}" 1>&2
chmod +x "${bin}"
"${bin}" --version | head -n1 | grep -qx "${version}" \
  || { echo "cerbos_install.sh: ${bin} does not report version ${version}" >&2; exit 1; }
echo "${bin}"
