#!/usr/bin/env bash
# Make sure a Prometheus server binary is installed, for the test that has a real Prometheus scrape a
# running decider (tests/prometheus.py runs it on 127.0.0.1 with a temp config and storage dir).
# Idempotent: installs Debian's `prometheus` package only when missing and when running as root.
# The package would start a system Prometheus of its own (listening on :9090); a temporary
# policy-rc.d keeps it from starting one. Prints the binary's path; exits 0 even when it cannot
# install (the test then skips with a loud message).
set -uo pipefail

if command -v prometheus >/dev/null 2>&1; then
  echo "prometheus: $(command -v prometheus)"
  exit 0
fi

if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "prometheus not found: installing it from Debian packages (apt-get install prometheus)" >&2
  export DEBIAN_FRONTEND=noninteractive
  made_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && made_policy=1
  fi
  # Other processes may hold the apt lock: wait for it rather than fail.
  apt-get -o DPkg::Lock::Timeout=600 update -qq >&2
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends prometheus >&2
  rc=$?
  [ -n "$made_policy" ] && rm -f /usr/sbin/policy-rc.d
  if [ $rc -eq 0 ] && command -v prometheus >/dev/null 2>&1; then
    # In case an init system started it anyway: the tests run their own.
    if command -v service >/dev/null 2>&1; then service prometheus stop >/dev/null 2>&1 || true; fi
    echo "prometheus: $(command -v prometheus)"
    exit 0
  fi
fi

echo "WARNING: Prometheus is not installed and could not be installed here; the Prometheus test will be SKIPPED" >&2
exit 0
