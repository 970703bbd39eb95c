#!/usr/bin/env bash
# Memory-safety stage under valgrind: the C test drivers without sanitizers or OpenMP, on a
# smaller problem (test_api --small); see .ci/sanitize.sh, which builds and runs them.
set -euo pipefail
exec "$(dirname "$0")/sanitize.sh" --valgrind
