#!/usr/bin/env bash
# demo.sh - the live demo end to end, as a test: recorder, dispatchers,
# requester, retries, dead letters, auditor; on its own bus and log root so
# it can run next to anything else. Exit status is the demo's.
#   demo.sh SHMBUS_DEMO SHM_DUMP
set -euo pipefail
demo=$1
root=$(mktemp -d)
bus="t$$_demo"
trap 'rm -rf "$root"; rm -f "/dev/shm/shmbus.$bus"' EXIT
export SHMBUS_LOG_DIR="$root"
"$demo" "$bus" >"$root/out" 2>&1 || { cat "$root/out"; exit 1; }
grep -q '^OK: every agent succeeded' "$root/out" || { cat "$root/out"; exit 1; }
grep -q 'dead.log' "$root/out" && grep -q 'after 3 attempts' "$root/out" || { cat "$root/out"; exit 1; }
echo "demo on bus $bus: ok ($(grep -c ' ms ' "$root/out") agent lines)"
