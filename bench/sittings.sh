#!/usr/bin/env bash
# How often this machine lets the two contested targets pass with one
# build, or with each of several builds in the same sittings: SITTINGS
# sittings, GAP seconds apart, each of RUNS spin ping-pong runs and RUNS
# batched 32-byte throughput runs of each BENCH (interleaved: run i of
# every build before run i + 1 of any), printing per sitting and build the
# medians of
#   - the spin round trip's p50 and its ratio to the spin floor of the
#     same run (target: at most 2.5),
#   - batched 32 B events/s (target: at least 15 M), the ring floor of the
#     same runs, and the publisher's and subscriber's ns an event,
# and at the end in how many sittings each target was met, per build. On
# a shared virtual machine both move with the half hour (README,
# Performance); this says how often, where one sitting says only whether,
# and builds are compared only in the same sittings.
#
#   bench/sittings.sh BENCH[,BENCH...] [SITTINGS (6)] [GAP_SECONDS (300)] [RUNS (5)]
#
# Each BENCH is a shmbus-bench binary (build/bench/shmbus-bench, and for
# example an older commit's in a `git worktree`).
set -euo pipefail
[ $# -ge 1 ] || { sed -n '2,20p' "$0" >&2; exit 2; }
IFS=, read -r -a benches <<<"$1"
sittings=${2:-6} gap=${3:-300} runs=${4:-5}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
field='function field(name) { return match($0, "\"" name "\": [0-9.]+") ? substr($0, RSTART + length(name) + 4, RLENGTH - length(name) - 4) : 0 }'
median='function median(x, n,   i, j, t) {
  for (i = 1; i < n; i++) for (j = i; j > 0 && x[j - 1] > x[j]; j--) { t = x[j]; x[j] = x[j - 1]; x[j - 1] = t }
  return n % 2 ? x[int(n / 2)] : (x[n / 2 - 1] + x[n / 2]) / 2
}'
for ((s = 1; s <= sittings; s++)); do
  runs_out=$(mktemp)
  for ((i = 0; i < runs; i++)); do
    for ((b = 0; b < ${#benches[@]}; b++)); do
      "${benches[b]}" pingpong --wait spin --runs 1 --json 2>/dev/null |
        awk -v b=$b "$field"' /"bench": "pingpong"/ && /"system": "shmbus"/ { s = field("rtt_p50_ns") }
          /"bench": "pingpong"/ && /"system": "floor-spin"/ { f = field("rtt_p50_ns") }
          END { if (s && f) print b, "spin", s, s / f, f }' >>"$runs_out"
    done
    for ((b = 0; b < ${#benches[@]}; b++)); do
      "${benches[b]}" throughput --payload 32 --batch 64 --runs 1 --iters 3000000 --json 2>/dev/null |
        awk -v b=$b "$field"' /"batch": 64/ && /"system": "shmbus"/ { e = field("events_per_s") / 1e6; pn = field("pub_ns"); sn = field("sub_poll_ns") + field("sub_release_ns") }
          /"batch": 64/ && /"system": "floor-ring"/ { f = field("events_per_s") / 1e6 }
          END { if (e && f) print b, "tp", e, f, pn, sn }' >>"$runs_out"
    done
  done
  when=$(date -u +%H:%M)
  for ((b = 0; b < ${#benches[@]}; b++)); do
    label=""
    [ ${#benches[@]} -gt 1 ] && label="build $((b + 1))  "
    awk -v b=$b -v when="$when" -v label="$label" "$median"'
      BEGIN { np = 0; nt = 0 }
      $1 == b && $2 == "spin" { p[np] = $3; r[np] = $4; fl[np] = $5; np++ }
      $1 == b && $2 == "tp" { e[nt] = $3; f[nt] = $4; pn[nt] = $5; sn[nt] = $6; nt++ }
      END {
        ratio = median(r, np); ev = median(e, nt)
        printf "%s%s UTC  spin p50 %4.0f ns, %.2fx the floor of %.0f ns (%s)  batched 32 B %5.2f M events/s (%s), ring floor %5.2f M, publisher %.0f ns, subscriber %.0f ns an event\n",
          label, when, median(p, np), ratio, median(fl, np), (ratio <= 2.5 ? "met" : "missed"), ev, (ev >= 15 ? "met" : "missed"),
          median(f, nt), median(pn, nt), median(sn, nt)
      }' "$runs_out" | tee -a "$out"
  done
  rm -f "$runs_out"
  [ "$s" -lt "$sittings" ] && sleep "$gap"
done
for ((b = 0; b < ${#benches[@]}; b++)); do
  label=""
  [ ${#benches[@]} -gt 1 ] && label="build $((b + 1)) (${benches[b]}): "
  awk -v label="$label" -v want="build $((b + 1)) " -v many=${#benches[@]} \
    'many > 1 && index($0, want) != 1 { next }
     { n++ } / \(met\)  batched/ { spin++ } /events\/s \(met\)/ { tp++ }
     END { printf "%s%d sittings: spin target met in %d, batched target met in %d\n", label, n, spin, tp }' "$out"
done
