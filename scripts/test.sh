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
  else failed=$((failed + 1)); failures+=("$name"); echo "==== $name: FAILED ($((SECONDS - t0)) s)"; return 1; fi
}
# A failed test's output is printed where it failed, often far above; its end
# (where a test says why it failed or what hung) is repeated at the very end.
recaps=$(mktemp); trap 'rm -f "$recaps"' EXIT
recap() { # recap BUILD_DIR: the last lines of each test that failed in its last ctest run
  local log=$1/Testing/Temporary/LastTest.log list=$1/Testing/Temporary/LastTestsFailed.log name
  [ -s "$list" ] && [ -f "$log" ] || return 0
  while IFS=: read -r _ name; do
    echo "==== recap: the last 40 lines of $name's output"
    awk -v t="$name" '$0 ~ "^[0-9]+/[0-9]+ Test: " t "$" {on = 1; next}
      on && /^<end of output>$/ {exit} on' "$log" | tail -n 40
  done < "$list"
}
ctest_tier() { # ctest_tier NAME BUILD_DIR CTEST_ARGS...
  local name=$1 dir=$2; shift 2
  tier "$name" ctest --no-tests=error --test-dir "$dir" --output-on-failure "$@" ||
    recap "$dir" >> "$recaps"
}
format_check() {
  local bad
  bad=$(git ls-files '*.c' '*.h' | xargs clang-format --dry-run -Werror 2>&1 | grep -o '^[^:]*\.[ch]' | sort -u)
  [ -z "$bad" ] || { echo "not formatted by .clang-format:"; echo "$bad"; return 1; }
}

tier "build" scripts/build.sh build
tier "format" format_check
ctest_tier "unit+tcp" build -L 'unit|tcp'
ctest_tier "rxe" build -L rxe
tier "asan-build" scripts/build.sh build-asan -DRDMIG_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest_tier "asan unit+tcp" build-asan -L 'unit|tcp'
tier "fuzz-build" env CC=clang scripts/build.sh build-fuzz -DRDMIG_FUZZ=ON \
  -DRDMIG_FUZZ_SECONDS="${RDMIG_FUZZ_SECONDS:-60}"
ctest_tier "fuzz" build-fuzz -L fuzz

if [ ${#failures[@]} -ne 0 ]; then
  cat "$recaps"
  echo "failed tiers: ${failures[*]}"
fi
echo "tests: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
