#!/usr/bin/env bash
# run-demo.sh - build shmbus (installing what is missing) and run the live
# multi-process demo on bus "demo". Extra arguments go to shmbus-demo
# (--keep, another bus name).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
tools/setup.sh build
exec build/tools/shmbus-demo "${@:-demo}"
