#!/usr/bin/env bash
# run-tests.sh - build shmbus (installing what is missing) and run every test
# suite twice: in the default build, then in an ASan/UBSan build (build-asan).
#
#   SHMBUS_SKIP_SANITIZERS=1 tools/run-tests.sh    skips the sanitizer pass
#                                                  (quick local runs only; CI
#                                                  runs both)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

echo "== default build (build/)"
tools/setup.sh build
meson test -C build --print-errorlogs

if [ "${SHMBUS_SKIP_SANITIZERS:-0}" = 1 ]; then
	echo "== sanitizer build skipped (SHMBUS_SKIP_SANITIZERS=1)"
	exit 0
fi

echo "== ASan/UBSan build (build-asan/)"
tools/setup.sh build-asan -Db_sanitize=address,undefined -Db_lundef=false
# ASan fails a test on its first report by default; UBSan only prints unless
# told to stop, and a report nobody reads is no check.
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
meson test -C build-asan --print-errorlogs
