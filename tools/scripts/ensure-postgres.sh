#!/usr/bin/env bash
# Make sure a PostgreSQL server (initdb, pg_ctl, postgres) is installed, for the tests that run
# against a real PostgreSQL. Idempotent: installs from Debian packages only when missing and when
# running as root. Prints the folder holding the binaries; exits 0 even when it cannot install
# (the tests then skip the PostgreSQL cases with a loud message).
set -uo pipefail

find_bin() {
  local d
  for d in /usr/lib/postgresql/*/bin /usr/local/pgsql/bin; do
    if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && [ -x "$d/postgres" ]; then echo "$d"; return 0; fi
  done
  if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
    dirname "$(readlink -f "$(command -v initdb)")"; return 0
  fi
  return 1
}

if dir=$(find_bin); then
  echo "postgresql binaries: $dir"
  exit 0
fi

if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "postgresql not found: installing it from Debian packages (apt-get install postgresql)" >&2
  export DEBIAN_FRONTEND=noninteractive
  if apt-get update -qq >&2 && apt-get install -y -qq postgresql >&2; then
    # The package starts a cluster of its own; the tests run their own server, so stop it.
    if command -v service >/dev/null 2>&1; then service postgresql stop >/dev/null 2>&1 || true; fi
    if dir=$(find_bin); then echo "postgresql binaries: $dir"; exit 0; fi
  fi
fi

echo "WARNING: PostgreSQL is not installed and could not be installed here; the PostgreSQL tests will be SKIPPED" >&2
exit 0
