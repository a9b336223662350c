#!/usr/bin/env bash
# Make sure Debian's `chromium` is installed, for the console's browser tests (Playwright drives it
# through executable_path; `playwright install` downloads a browser of its own, which we never do).
# Idempotent: installs from Debian packages only when missing and when running as root. Prints the
# path of the binary; exits 0 even when it cannot install (the browser tests then skip loudly).
set -uo pipefail

find_bin() {
  local b
  for b in /usr/bin/chromium /usr/bin/chromium-browser; do
    if [ -x "$b" ]; then echo "$b"; return 0; fi
  done
  return 1
}

if bin=$(find_bin); then
  echo "chromium: $bin"
  exit 0
fi

if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "chromium not found: installing it from Debian packages (apt-get install chromium)" >&2
  export DEBIAN_FRONTEND=noninteractive
  # Other jobs may hold the apt lock: wait for it rather than fail.
  if apt-get -o DPkg::Lock::Timeout=600 update -qq >&2 \
     && apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends chromium fonts-dejavu-core >&2; then
    if bin=$(find_bin); then echo "chromium: $bin"; exit 0; fi
  fi
fi

echo "WARNING: chromium is not installed and could not be installed here; the console browser tests will be SKIPPED" >&2
exit 0
