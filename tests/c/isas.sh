#!/bin/sh
# The SIMD instruction sets of csrc/isa_list.h (the one list), a line each:
#   tests/c/isas.sh [ARCH]   "name flags..." of those ARCH has (x86_64, aarch64; default: the
#                            architecture $CC, or cc, compiles for)
#   tests/c/isas.sh --all    every name, whatever the architecture
set -eu
list="$(cd "$(dirname "$0")/../.." && pwd)/csrc/isa_list.h"
entries() { # "arch name flags..." per entry
    sed -n 's/^ *X([A-Z0-9_]*, *\([a-z0-9_]*\), *\([a-z0-9_]*\), *"\([^"]*\)").*/\2 \1 \3/p' "$list"
}
if [ "${1:-}" = --all ]; then
    entries | cut -d' ' -f2
    exit 0
fi
arch=${1:-$(${CC:-cc} -dumpmachine)}
case $arch in
x86_64* | amd64*) arch=x86_64 ;;
aarch64* | arm64*) arch=aarch64 ;;
esac
entries | while read -r a name flags; do
    if [ "$a" = "$arch" ]; then echo "$name $flags"; fi
done
