#!/bin/sh
# Cross-compiles the standalone kernel test (tests/c) for AArch64 with the NEON kernels and
# runs it under qemu-user. Installs Debian's cross compiler and qemu-user when missing.
# Extra arguments are passed to the test's environment, e.g. FUSEDCE_TEST_EXHAUSTIVE=1. The
# kernels' output hashes are checked against tests/c/kernel_hashes.txt's aarch64 lines.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)

if ! command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || ! command -v qemu-aarch64 >/dev/null 2>&1; then
    echo "installing gcc-aarch64-linux-gnu and qemu-user"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq gcc-aarch64-linux-gnu qemu-user >/dev/null
fi

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
CC=aarch64-linux-gnu-gcc CFLAGS="${CFLAGS:--O2 -g}" "$root/tests/c/build.sh" "$out/test_kernels"
env "$@" qemu-aarch64 -L /usr/aarch64-linux-gnu "$out/test_kernels" --check-hashes "$root/tests/c/kernel_hashes.txt"
