#!/usr/bin/env bash
# setup.sh - make a clean clone buildable, then build it.
#
#   tools/setup.sh [BUILDDIR [MESON-OPTION...]]     BUILDDIR defaults to build
#
# Installs the Debian 12 packages shmbus needs if any is missing (as root, with
# a single apt-get update first; without root it only says what to install),
# then sets up BUILDDIR with the given options, or reconfigures it if it
# exists, and builds it with ninja. Says nothing about packages or meson when
# there is nothing to do. run-demo.sh and run-tests.sh start with it.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

packages=(build-essential meson ninja-build pkg-config liburing-dev libxxhash-dev libcriterion-dev libjansson-dev valgrind)

missing=()
for p in "${packages[@]}"; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
		missing+=("$p")
	fi
done

if [ ${#missing[@]} -gt 0 ]; then
	if [ "$(id -u)" -ne 0 ]; then
		echo "setup.sh: missing packages: ${missing[*]}" >&2
		echo "setup.sh: run as root, or: sudo apt-get install ${missing[*]}" >&2
		exit 1
	fi
	echo "setup.sh: installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

builddir=${1:-build}
if [ $# -gt 0 ]; then
	shift
fi

# meson is chatty; its output is shown only when it fails.
quiet_meson() {
	local out
	if ! out=$(meson "$@" 2>&1); then
		printf '%s\n' "$out" >&2
		echo "setup.sh: meson $* failed" >&2
		exit 1
	fi
}

if [ -f "$builddir/build.ninja" ]; then
	if [ $# -gt 0 ]; then
		quiet_meson configure "$builddir" "$@"
	fi
elif [ -f "$builddir/meson-private/coredata.dat" ]; then
	quiet_meson setup --reconfigure "$builddir" "$@"  # an interrupted setup
else
	quiet_meson setup "$builddir" "$@"
fi
ninja -C "$builddir"
