#!/usr/bin/env bash
# Explore every fuzz target with libFuzzer (clang, ASan+UBSan) for a while,
# starting from the committed corpora; new crashes land in build-fuzz/.
#   tools/fuzz.sh [SECONDS_PER_TARGET]   (default 60)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
command -v clang >/dev/null || { echo "fuzz.sh: clang is required (apt-get install clang)" >&2; exit 2; }
if [ ! -d build-fuzz ]; then
  CC=clang meson setup build-fuzz -Dfuzz=true -Db_lundef=false -Dtools=true >/dev/null
fi
ninja -C build-fuzz >/dev/null
for t in event segment cli log; do
  work=$(mktemp -d)
  cp tests/fuzz/corpus/$t/* "$work"/
  echo "fuzzing $t for ${secs}s"
  (cd build-fuzz && ./tests/fuzz/fuzz-$t -max_total_time="$secs" -max_len=65536 "$work" 2>&1 | tail -n 3)
  rm -rf "$work"
done
