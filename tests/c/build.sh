#!/bin/sh
# Builds the standalone kernel test: tests/c/build.sh [output]   (default tests/c/test_kernels)
# Links ce_portable.c, dispatch.c (what the CPU has), kernel_hashes.c (the --hashes mode) and
# the ISA files of the target, those tests/c/isas.sh lists from csrc/isa_list.h (ISAS="avx2"
# etc. to choose), each with test_vocab.c, its vocabulary's own test. CC, CFLAGS, LDFLAGS as usual, e.g.
#   CFLAGS="-O1 -g -fsanitize=address,undefined" tests/c/build.sh && tests/c/test_kernels
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
CC=${CC:-cc}
CFLAGS=${CFLAGS:--O2 -g}
LDFLAGS=${LDFLAGS:-}
out=${1:-$here/test_kernels}
isa_lines=$(CC=$CC sh "$here/isas.sh")
ISAS=${ISAS-$(echo "$isa_lines" | cut -d' ' -f1)}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# ISO C contracts nothing into FMAs the code did not write (as the library build does).
common="-std=c11 -ffp-contract=off -Wall -Wextra -I$root/csrc -I$root/csrc/include"
objs=""
for isa in portable $ISAS; do
    # Each ISA file gets its own flags only, exactly as the library build does.
    isa_flags=$(echo "$isa_lines" | awk -v n="$isa" '$1 == n { $1 = ""; print }')
    # shellcheck disable=SC2086 # word splitting of flag lists is intended
    $CC $CFLAGS $common $isa_flags -c "$root/csrc/ce_$isa.c" -o "$tmp/ce_$isa.o"
    objs="$objs $tmp/ce_$isa.o"
    if [ "$isa" != portable ]; then
        # shellcheck disable=SC2086
        $CC $CFLAGS $common $isa_flags -D_DEFAULT_SOURCE -include "simd_$isa.h" -DVOCAB_ISA="$isa" -c "$here/test_vocab.c" \
            -o "$tmp/vocab_$isa.o"
        objs="$objs $tmp/vocab_$isa.o"
    fi
done
# shellcheck disable=SC2086
$CC $CFLAGS $common "$here/test_kernels.c" "$here/kernel_hashes.c" "$root/csrc/dispatch.c" $objs -o "$out" \
    $LDFLAGS -lm -lpthread
