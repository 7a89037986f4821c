#!/usr/bin/env bash
# Compare the ping-pong round trip of two builds in one sitting: runs of
#   A pingpong --wait WAIT --runs 1   and   B ... (the same)
# taking turns, ROUNDS of each, then the median over each build's runs of
# the per-run shmbus p50 and of its ratio to the floor of the same run.
# Interleaving is what makes the two comparable on a shared machine, where
# the floor alone moves by a quarter from one sitting to the next.
#
#   bench/ab-pingpong.sh A_BENCH B_BENCH [ROUNDS (20)] [WAIT (spin)]
#
# A_BENCH and B_BENCH are shmbus-bench binaries (for example this build's
# and one of a `git worktree` of an older commit).
#
# With spin, each side's runs are also split by the floor of the run,
# which tells where the host put the two virtual CPUs (README,
# Performance): "shared core" (spin floor under 90 ns), "near" (90-250)
# and "far" (250 and more), with the mean of the p50s as well as the
# median: p50s come in steps of the clock (10 ns on some machines), and
# the mean of many runs resolves a difference finer than a step.
set -euo pipefail
[ $# -ge 2 ] || { sed -n '2,19p' "$0" >&2; exit 2; }
a=$1 b=$2 rounds=${3:-20} wait=${4:-spin}
floor="floor-spin"
[ "$wait" = spin ] || floor="floor-futex"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for ((i = 0; i < rounds; i++)); do
  for side in A B; do
    bin=$a
    [ $side = B ] && bin=$b
    # one JSON object per line: keep the p50 of shmbus and of the floor
    "$bin" pingpong --wait "$wait" --runs 1 --json 2>/dev/null |
      sed -n 's/.*"system": "\([a-z-]*\)".*"bench": "pingpong".*"rtt_p50_ns": \([0-9.]*\).*/\1 \2/p' |
      awk -v side=$side -v floor=$floor '$1 == "shmbus" { s = $2 } $1 == floor { f = $2 }
        END { if (s && f) print side, s, s / f, f }' >>"$out"
  done
done
for side in A B; do
  awk -v side=$side 'BEGIN { n = 0 } $1 == side { p[n] = $2; r[n] = $3; n++ }
    function median(x, n,   i, j, t) {
      for (i = 1; i < n; i++) for (j = i; j > 0 && x[j - 1] > x[j]; j--) { t = x[j]; x[j] = x[j - 1]; x[j - 1] = t }
      return n % 2 ? x[int(n / 2)] : (x[n / 2 - 1] + x[n / 2]) / 2
    }
    END { printf "%s  runs %d  shmbus p50 median %.0f ns  ratio to the floor median %.2f\n", side, n, median(p, n), median(r, n) }' "$out"
done
# the placements by the spin floor only: a futex floor is microseconds
[ "$wait" = spin ] || exit 0
for side in A B; do
  for place in "shared core" near far; do
    awk -v side=$side -v place="$place" 'BEGIN { n = 0 }
      $1 == side && ((place == "shared core" && $4 < 90) || (place == "near" && $4 >= 90 && $4 < 250) || (place == "far" && $4 >= 250)) {
        p[n] = $2; r[n] = $3; sp += $2; sr += $3; n++ }
      function median(x, n,   i, j, t) {
        for (i = 1; i < n; i++) for (j = i; j > 0 && x[j - 1] > x[j]; j--) { t = x[j]; x[j] = x[j - 1]; x[j - 1] = t }
        return n % 2 ? x[int(n / 2)] : (x[n / 2 - 1] + x[n / 2]) / 2
      }
      END { if (n) printf "%s  %-11s runs %3d  p50 median %.0f ns, mean %.1f  ratio median %.2f, mean %.3f\n", side, place, n, median(p, n), sp / n, median(r, n), sr / n }' "$out"
  done
done
