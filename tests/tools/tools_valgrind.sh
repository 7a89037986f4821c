#!/usr/bin/env bash
# tools_valgrind.sh - the command-line tools under valgrind memcheck: on a
# live bus (create, pub, sub, info, stat, shm-dump), on a truncated copy
# and on random bytes (shm-dump must fail cleanly, not corrupt memory).
# Any memcheck error or leak fails the test. Skipped when valgrind is
# missing or the build is sanitized (ASan and valgrind do not mix).
#   tools_valgrind.sh SHMBUS SHM_DUMP
set -euo pipefail
cli=$1
dump=$2
if ! command -v valgrind >/dev/null; then
	echo "valgrind not installed: skipped"
	exit 77
fi
if ldd "$cli" | grep -qE 'libasan|libtsan|libubsan'; then
	echo "sanitized build: skipped"
	exit 77
fi
bus="t$$_valgrind"
tmp=$(mktemp -d)
export SHMBUS_LOG_DIR="$tmp/logs" # the bus's dead letters live here
trap 'rm -rf "$tmp"; "$cli" rm "$bus" >/dev/null 2>&1 || true' EXIT
vg() {
	valgrind --quiet --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite,indirect \
		--child-silent-after-fork=yes "$@"
}
expect() { # expected-status command...
	local want=$1 rc=0
	shift
	vg "$@" >"$tmp/out" 2>"$tmp/err" || rc=$?
	if [ "$rc" -ne "$want" ]; then
		echo "FAIL: '$*' exited $rc, want $want"
		cat "$tmp/err"
		exit 1
	fi
	echo "ok: $* (exit $rc)"
}
expect 0 "$cli" create "$bus" --slots 256 --max-payload 4096
expect 0 "$cli" pub "$bus" --type command --name go --target worker --data '{"n":1}' --count 3
# a subscriber that gets what is published while it waits
vg "$cli" sub "$bus" --count 2 --timeout 20s --json >"$tmp/sub.out" 2>"$tmp/sub.err" &
sub=$!
for _ in $(seq 100); do
	"$cli" info "$bus" --json | grep -q '"subscriptions":\[{' && break
	sleep 0.1
done
expect 0 "$cli" pub "$bus" --type notification --name done --data '"x"' --count 2
if ! wait "$sub"; then
	echo "FAIL: sub under valgrind"
	cat "$tmp/sub.err"
	exit 1
fi
echo "ok: sub received $(wc -l <"$tmp/sub.out") events"
# a dispatcher running a command per event: one succeeds, one fails twice
# and is dead-lettered. On the io_uring backend without worker threads:
# valgrind 3.19 treats io_uring_enter as non-blocking (other threads starve
# while one waits in it) and does not know futex_waitv (the fallback), so
# the worker pool is checked by the sanitizer builds instead.
vg "$cli" sub "$bus" --id execer --exec 'read l; [ "$SHMBUS_EVENT_NAME" = ok ]' \
	--max-retries 1 --retry-base 10ms --count 2 --timeout 30s >"$tmp/exec.out" 2>"$tmp/exec.err" &
sub=$!
for _ in $(seq 100); do
	"$cli" info "$bus" --json | grep -q '"subscriber_id":"execer"' && break
	sleep 0.1
done
expect 0 "$cli" pub "$bus" --type command --name ok
expect 0 "$cli" pub "$bus" --type command --name bad
if ! wait "$sub"; then
	echo "FAIL: sub --exec under valgrind"
	cat "$tmp/exec.err"
	exit 1
fi
echo "ok: sub --exec handled 2 events"
expect 0 "$cli" dlq "$bus" ls --json
grep -q '"reason":"failed"' "$tmp/out" || { echo "FAIL: no dead letter"; cat "$tmp/out"; exit 1; }
expect 0 "$cli" info "$bus"
expect 0 "$cli" stat "$bus" --json
expect 0 "$cli" ls
expect 0 "$dump" "$bus" --events 5
head -c 5000 "/dev/shm/shmbus.$bus" >"$tmp/truncated"
expect 1 "$dump" "$tmp/truncated"
head -c 100000 /dev/urandom >"$tmp/random"
expect 1 "$dump" "$tmp/random" --json
expect 2 "$cli" pub "$bus" --type nope --name x
expect 0 "$cli" rm "$bus"
echo "1 passed, 0 failed"
