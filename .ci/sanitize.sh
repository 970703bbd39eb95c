#!/usr/bin/env bash
# Memory-safety stage: the C test drivers built from csrc/ with AddressSanitizer and
# UndefinedBehaviorSanitizer (OpenMP on), or with --valgrind, without sanitizers or OpenMP and
# run under valgrind (a smaller problem; .ci/valgrind.sh is that).
#
#   tests/c/test_api.c      the public C API on every ISA, with all of csrc/ (the library)
#   tests/c/test_kernels.c  the per-ISA row primitives, built by tests/c/build.sh (ce_portable.c,
#                           the ISA files and dispatch.c); with ASan it also checks every
#                           primitive's output hash against tests/c/kernel_hashes.txt (too slow
#                           under valgrind)
#   tests/c/test_pool.c     the buffer pool (csrc/buffer_pool.c): threads, bounds, fork
#
# Each ISA file gets its own flags only (csrc/isa_list.h), as CMakeLists.txt does. Exit status:
# non-zero on any build failure, sanitizer report, valgrind error or leak, or failed check.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=asan
if [ "${1:-}" = "--valgrind" ]; then mode=valgrind; fi

CC=${CC:-gcc}

install_quietly() { # install_quietly <command> <Debian package>
    command -v "$1" >/dev/null 2>&1 && return 0
    echo "+ installing $2"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq >/dev/null && $sudo apt-get install -y -qq "$2" >/dev/null
}
install_quietly "$CC" gcc
if [ "$mode" = valgrind ]; then install_quietly valgrind valgrind; fi

if [ "$mode" = asan ]; then
    cflags="-std=c11 -g -O1 -fno-math-errno -ffp-contract=off -fno-omit-frame-pointer -fopenmp -fsanitize=address,undefined -fno-sanitize-recover=all"
    ldflags="-fsanitize=address,undefined -fopenmp"
    export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1"
    export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
    run=()
    api_args=()
else
    # valgrind and libgomp's threads are noisy together: no OpenMP here (the pragmas are
    # then plain loops); valgrind's CPU has no AVX-512, so those kernels are skipped.
    cflags="-std=c11 -g -O1 -fno-math-errno -ffp-contract=off -Wno-unknown-pragmas -Wno-unused-variable"
    ldflags=""
    run=(valgrind -q --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite,indirect,possible)
    api_args=(--small)
fi

# The ISA files of this target, from csrc/isa_list.h (tests/c/isas.sh): "name flags..." lines.
isa_lines=$(CC=$CC sh tests/c/isas.sh)
isas=$(echo "$isa_lines" | cut -d' ' -f1 | tr '\n' ' ')
isas=${isas% }
all_isas=" $(sh tests/c/isas.sh --all | tr '\n' ' ') "
isa_flags() { echo "$isa_lines" | awk -v n="$1" '$1 == n { $1 = ""; print }'; }

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
common="$cflags -Wall -Icsrc -Icsrc/include"

# The library: every csrc/*.c, ISA files with their flags; other targets' ISA files left out.
objects=()
for src in csrc/*.c; do
    name=$(basename "$src" .c)
    flags=""
    case $all_isas in
    *" ${name#ce_} "*)
        case " $isas " in *" ${name#ce_} "*) flags=$(isa_flags "${name#ce_}") ;; *) continue ;; esac
        ;;
    esac
    # shellcheck disable=SC2086 # flag lists are meant to split
    $CC $common $flags -c "$src" -o "$out/$name.o"
    objects+=("$out/$name.o")
done
# shellcheck disable=SC2086
$CC $common tests/c/test_api.c "${objects[@]}" -o "$out/test_api" $ldflags -lm -lpthread

status=0
echo "+ test_api ${api_args[*]} ($mode)"
"${run[@]}" "$out/test_api" "${api_args[@]}" | tail -n 40 || status=1

if [ -f tests/c/test_pool.c ]; then
    # shellcheck disable=SC2086
    $CC $common tests/c/test_pool.c "$out/buffer_pool.o" -o "$out/test_pool" $ldflags -lpthread
    echo "+ test_pool ($mode)"
    "${run[@]}" "$out/test_pool" | tail -n 40 || status=1
fi

CC=$CC CFLAGS="$cflags" LDFLAGS="$ldflags" ISAS="$isas" sh tests/c/build.sh "$out/test_kernels"
if [ -x "$out/test_kernels" ]; then
    echo "+ test_kernels ($mode)"
    kernel_args=(--check-hashes tests/c/kernel_hashes.txt)
    if [ "$mode" = valgrind ]; then export FUSEDCE_TEST_SMALL=1; kernel_args=(); fi
    "${run[@]}" "$out/test_kernels" "${kernel_args[@]}" | tail -n 40 || status=1
fi

if [ "$status" -ne 0 ]; then echo "sanitize ($mode): FAILED"; else echo "sanitize ($mode): ok"; fi
exit "$status"
