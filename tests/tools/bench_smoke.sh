#!/bin/sh
# shmbus-bench end to end with tiny counts: every mode runs, every system
# (shmbus and its three floors) reports a JSON line with its figures, and
# the log benches and the per-side cost tool run. Nothing here judges
# speed: that is the bench's job on a quiet machine, never a test's.
set -eu
bench=$1
cost_bin=$2
ab=$3
dlq_cost=$4
out=$(mktemp)
trap 'rm -f "$out"' EXIT

"$bench" all --json --runs 1 --iters 3000 --warmup 200 --idle-seconds 1 >"$out"
for sys in shmbus floor-spin floor-futex floor-ring; do
	grep -q "^{\"system\": \"$sys\"" "$out" || { echo "no result from $sys"; cat "$out"; exit 1; }
done
# every throughput line has a positive rate, every ping-pong line a p50
if grep '"bench": "throughput"' "$out" | grep -v '"events_per_s": [1-9]' | grep -q .; then
	echo "a throughput result without a rate:"; cat "$out"; exit 1
fi
if grep '"bench": "pingpong"' "$out" | grep -v '"rtt_p50_ns": [1-9]' | grep -q .; then
	echo "a ping-pong result without a p50:"; cat "$out"; exit 1
fi
[ "$(grep -c '"bench": "throughput"' "$out")" -eq 8 ] || { echo "expected 8 throughput results"; cat "$out"; exit 1; }
# the spin floor, measured above in turns with shmbus spin, and alone
[ "$(grep -c '"system": "floor-spin"' "$out")" -eq 1 ] || { echo "expected one floor-spin result"; cat "$out"; exit 1; }
"$bench" floor-spin --json --runs 1 --iters 2000 --warmup 100 | grep -q '^{"system": "floor-spin", .*"rtt_p50_ns": [1-9]' ||
	{ echo "floor-spin alone: no p50"; exit 1; }
# the publisher flag's switches: ping-pong without it, a stream with it
"$bench" pingpong --wait spin --json --runs 1 --iters 2000 --warmup 100 --no-low-latency |
	grep -q '^{"system": "shmbus", .*"rtt_p50_ns": [1-9]' || { echo "--no-low-latency: no p50"; exit 1; }
# added work before each answer: reported on shmbus's line, not on the floor's
aw=$("$bench" pingpong --wait spin --json --runs 1 --iters 2000 --warmup 100 --answer-work 40)
echo "$aw" | grep -q '^{"system": "shmbus", .*"answer_work": 40, "rtt_p50_ns": [1-9]' ||
	{ echo "--answer-work: no p50 with the work named"; echo "$aw"; exit 1; }
if echo "$aw" | grep '"system": "floor' | grep -q answer_work; then
	echo "--answer-work named on a floor"; echo "$aw"; exit 1
fi
"$bench" throughput --payload 32 --batch 1 --json --runs 1 --iters 3000 --low-latency |
	grep -q '^{"system": "shmbus", .*"events_per_s": [1-9]' || { echo "--low-latency: no rate"; exit 1; }
# the batched shmbus runs (32 B and 1 KiB) say where their time went
split='"sub_poll_ns": [0-9.]*, "sub_release_ns": [0-9.]*, "sub_idle_percent": [0-9.]*, "pub_ns": [1-9][0-9.]*, "space_waits": [0-9]*}$'
[ "$(grep '"system": "shmbus", "bench": "throughput"' "$out" | grep -v '"batch": 1,' | grep -c "$split")" -eq 2 ] ||
	{ echo "expected the time split on both batched shmbus throughput results"; cat "$out"; exit 1; }
if grep '"batch": 1,' "$out" | grep -q '"pub_ns"'; then
	echo "a time split on a single-publish result:"; cat "$out"; exit 1
fi
# several publishers to one subscriber: every event arrives (the bench
# checks the count and the byte sum) and the results say how many sent
"$bench" throughput --json --runs 1 --iters 3000 --payload 32 --publishers 3 >"$out"
[ "$(grep -c '"system": "shmbus", "bench": "throughput".*"publishers": 3, "events_per_s": [1-9]' "$out")" -eq 2 ] ||
	{ echo "throughput --publishers 3: expected 2 results of 3 publishers with a rate"; cat "$out"; exit 1; }
"$bench" record --events 3000 --runs 1 >/dev/null
# the per-side cost tool: both parts run and report
cost=$("$cost_bin" --events 6400)
for part in "one-thread: publish" "apart: publish" "apart: consume"; do
	echo "$cost" | grep -q "^$part [0-9.]* ns/event" || { echo "shmbus-event-cost: no '$part'"; echo "$cost"; exit 1; }
done
single=$("$cost_bin" --single --events 6400)
echo "$single" | grep -q "^single: publish, wait and release [0-9.]* ns/event" ||
	{ echo "shmbus-event-cost --single: no figure"; echo "$single"; exit 1; }
empty=$("$cost_bin" --empty-poll --events 6400)
echo "$empty" | grep -q "^empty-poll: a poll finding nothing [0-9.]* ns/poll" ||
	{ echo "shmbus-event-cost --empty-poll: no figure"; echo "$empty"; exit 1; }
# the A/B script, the build against itself: a median for each side
abo=$("$ab" "$bench" "$bench" 1)
for side in A B; do
	echo "$abo" | grep -q "^$side  runs 1  shmbus p50 median [1-9][0-9]* ns  ratio to the floor median [0-9.]*$" ||
		{ echo "ab-pingpong.sh: no figure for $side"; echo "$abo"; exit 1; }
done
# the dead-letter append cost: a median for each tenth, in a log of its own
dlq=$("$dlq_cost" --letters 200)
[ "$(echo "$dlq" | grep -c '^letters [0-9]*\.\.[0-9]*: median append [0-9.]* us$')" -eq 10 ] ||
	{ echo "shmbus-dlq-cost: not ten medians"; echo "$dlq"; exit 1; }
echo "$dlq" | grep -q '^dispatcher: 200 expired events dead-lettered, [0-9.]* us per letter$' ||
	{ echo "shmbus-dlq-cost: no dispatcher figure"; echo "$dlq"; exit 1; }
echo "bench smoke ok"
