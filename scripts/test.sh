#!/bin/bash
# The README's second command: install, build, and run every test tier.
#   1. the default build (warnings are errors) and the .clang-format check
#   2. unit tests and the conformance suite on libfabric's tcp provider (loopback)
#   3. the soft-RoCE tier: the same suite on verbs and fabric/verbs in a qemu guest
#   4. an ASan+UBSan build running tiers 1-2 again
#   5. the libFuzzer targets for a bounded time (RDMIG_FUZZ_SECONDS, default 60)
# Ends with "tests: N passed, N failed", one per tier, and fails if any tier did.
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh || exit 1

passed=0; failed=0; failures=()
tier() { # tier NAME CMD...: run one tier, count it
  local name=$1; shift
  echo "==== $name"
  local t0=$SECONDS
  if "$@"; then passed=$((passed + 1)); echo "==== $name: ok ($((SECONDS - t0)) s)"
  else failed=$((failed + 1)); failures+=("$name"); echo "==== $name: FAILED ($((SECONDS - t0)) s)"; fi
}
format_check() {
  local bad
  bad=$(git ls-files '*.c' '*.h' | xargs clang-format --dry-run -Werror 2>&1 | grep -o '^[^:]*\.[ch]' | sort -u)
  [ -z "$bad" ] || { echo "not formatted by .clang-format:"; echo "$bad"; return 1; }
}

tier "build" scripts/build.sh build
tier "format" format_check
tier "unit+tcp" ctest --no-tests=error --test-dir build --output-on-failure -L 'unit|tcp'
tier "rxe" ctest --no-tests=error --test-dir build --output-on-failure -L rxe
tier "asan-build" scripts/build.sh build-asan -DRDMIG_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug
tier "asan unit+tcp" env ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --no-tests=error --test-dir build-asan --output-on-failure -L 'unit|tcp'
tier "fuzz-build" env CC=clang scripts/build.sh build-fuzz -DRDMIG_FUZZ=ON \
  -DRDMIG_FUZZ_SECONDS="${RDMIG_FUZZ_SECONDS:-60}"
tier "fuzz" ctest --no-tests=error --test-dir build-fuzz --output-on-failure -L fuzz

[ ${#failures[@]} -eq 0 ] || echo "failed tiers: ${failures[*]}"
echo "tests: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
