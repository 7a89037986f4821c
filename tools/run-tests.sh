#!/usr/bin/env bash
# run-tests.sh - build shmbus (installing what is missing) and run every test
# suite three times: in the default build, in an ASan/UBSan build
# (build-asan) and in a ThreadSanitizer build (build-tsan; Criterion's runner
# cannot start under TSan, so there the thread stress suite, the fuzz
# corpora and the tool checks run).
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

echo "== ThreadSanitizer build (build-tsan/)"
tools/setup.sh build-tsan -Db_sanitize=thread -Db_lundef=false
export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1}
meson test -C build-tsan --print-errorlogs

# One closing line for whoever reads the log: suites passed and failed over
# the three builds (meson exits non-zero above on any failure).
python3 - build build-asan build-tsan <<'PY'
import json, sys
passed = failed = skipped = 0
for d in sys.argv[1:]:
    try:
        with open(f"{d}/meson-logs/testlog.json") as f:
            for line in f:
                r = json.loads(line).get("result")
                if r in ("OK", "EXPECTEDFAIL"):
                    passed += 1
                elif r == "SKIP":
                    skipped += 1
                else:
                    failed += 1
    except FileNotFoundError:
        pass
print(f"{passed} passed, {failed} failed, {skipped} skipped")
PY
