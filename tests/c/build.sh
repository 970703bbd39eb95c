#!/bin/sh
# Builds the standalone kernel test: tests/c/build.sh [output]   (default tests/c/test_kernels)
# Links ce_portable.c, kernel_hashes.c (its --hashes mode) and the ISA files of the target:
# avx2 + avx512 on x86-64, neon on AArch64 (ISAS="avx2" etc. to choose). CC, CFLAGS, LDFLAGS as usual, e.g.
#   CFLAGS="-O1 -g -fsanitize=address,undefined" tests/c/build.sh && tests/c/test_kernels
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
CC=${CC:-cc}
CFLAGS=${CFLAGS:--O2 -g}
LDFLAGS=${LDFLAGS:-}
out=${1:-$here/test_kernels}
case $($CC -dumpmachine) in
x86_64* | amd64*) ISAS=${ISAS-avx2 avx512} ;;
aarch64* | arm64*) ISAS=${ISAS-neon} ;;
*) ISAS=${ISAS-} ;;
esac

# Each ISA file gets its own flags only, exactly as the library build does.
flags_avx2="-mavx2 -mfma -mf16c"
flags_avx512="-mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma -mf16c"
flags_neon=""

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
defs=""
for isa in $ISAS; do
    defs="$defs -DFUSEDCE_HAVE_$(echo "$isa" | tr a-z A-Z)"
done
common="-std=c11 -ffp-contract=off -Wall -Wextra -I$root/csrc -I$root/csrc/include $defs"
objs=""
for isa in portable $ISAS; do
    eval "isa_flags=\${flags_$isa:-}"
    # shellcheck disable=SC2086 # word splitting of flag lists is intended
    $CC $CFLAGS $common $isa_flags -c "$root/csrc/ce_$isa.c" -o "$tmp/ce_$isa.o"
    objs="$objs $tmp/ce_$isa.o"
done
# shellcheck disable=SC2086
$CC $CFLAGS $common "$here/test_kernels.c" "$here/kernel_hashes.c" $objs -o "$out" $LDFLAGS -lm
