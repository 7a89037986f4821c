#!/usr/bin/env bash
# Compare the batched 32-byte throughput of several builds in one sitting:
# runs of
#   BIN throughput --payload 32 --batch 64 --runs 1 --iters ITERS --json
# for each BIN in turn, ROUNDS times over, then per build the median of
# its runs' shmbus events/s and of their ratios to the ring floor measured
# right after each (`floor-ring`), and of where the time went (subscriber
# poll and release, publisher publish calls, ns an event). One run here
# moves by a quarter from the next, so builds are compared in such
# interleaved runs, and by their medians over many (20 or more for a
# difference of a tenth).
#
#   bench/ab-throughput.sh ROUNDS BIN... [-- ITERS (3000000)]
#
# Each BIN is a shmbus-bench binary (for example this build's and one of a
# `git worktree` of an older commit).
set -euo pipefail
[ $# -ge 2 ] || { sed -n '2,16p' "$0" >&2; exit 2; }
rounds=$1
shift
bins=() iters=3000000
while [ $# -gt 0 ]; do
  if [ "$1" = -- ]; then
    iters=${2:?ITERS after --}
    break
  fi
  bins+=("$1")
  shift
done
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for ((i = 0; i < rounds; i++)); do
  for k in "${!bins[@]}"; do
    # one JSON object per line: the batched shmbus figure and its floor
    "${bins[$k]}" throughput --payload 32 --batch 64 --runs 1 --iters "$iters" --json 2>/dev/null |
      awk -v side="$k" '
        function field(name) { return match($0, "\"" name "\": [0-9.]+") ? substr($0, RSTART + length(name) + 4, RLENGTH - length(name) - 4) : 0 }
        /"batch": 64/ { v = field("events_per_s") / 1e6 }
        /"system": "shmbus"/ && /"batch": 64/ { s = v; sp = field("sub_poll_ns"); sr = field("sub_release_ns"); pn = field("pub_ns") }
        /"system": "floor-ring"/ && /"batch": 64/ { f = v }
        END { if (s && f) print side, s, s / f, sp, sr, pn }' >>"$out"
  done
done
for k in "${!bins[@]}"; do
  awk -v side="$k" -v name="${bins[$k]}" '
    function median(x, n,   i, j, t) {
      for (i = 1; i < n; i++) for (j = i; j > 0 && x[j - 1] > x[j]; j--) { t = x[j]; x[j] = x[j - 1]; x[j - 1] = t }
      return n % 2 ? x[int(n / 2)] : (x[n / 2 - 1] + x[n / 2]) / 2
    }
    $1 == side { e[n] = $2; r[n] = $3; sp[n] = $4; sr[n] = $5; pn[n] = $6; n++ }
    END {
      printf "%s  runs %d  batched 32 B median %.2f M events/s  ratio to the ring floor median %.3f\n", name, n, median(e, n), median(r, n)
      # builds from before the split was measured print none of it
      if (median(pn, n) > 0)
        printf "  subscriber poll %.1f + release %.1f ns/event, publisher %.1f ns/event in publish calls (medians)\n", median(sp, n), median(sr, n), median(pn, n)
    }' "$out"
done
