#!/usr/bin/env bash
# Builds the compiled backend with AddressSanitizer and UndefinedBehaviorSanitizer in a
# temporary copy of the sources and runs the cython backend's tests against it. Any
# sanitizer report fails the run. Needs gcc with libasan/libubsan; uses the current
# Python environment (numpy, scipy, Cython, pytest, hypothesis).
#
#   tools/sanitize.sh [extra pytest arguments]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
start=$SECONDS

# build inputs and tests only: never the checkout's own extension or generated C
mkdir -p "$work/src/rnncore"
cp "$root/setup.py" "$root/pyproject.toml" "$root/README.md" "$work/"
cp -r "$root/csrc" "$root/tests" "$work/"
(cd "$root/src/rnncore" && tar cf - --exclude='*.so' --exclude='*.c' --exclude=__pycache__ .) |
    (cd "$work/src/rnncore" && tar xf -)

cd "$work"
flags="-fsanitize=address,undefined -fno-omit-frame-pointer -g"
RNNCORE_REQUIRE_EXTENSION=1 RNNCORE_EXTRA_CFLAGS="$flags" RNNCORE_EXTRA_LDFLAGS="$flags" \
    python setup.py -q build_ext --inplace > build.log 2>&1 || { cat build.log; exit 1; }
# the build really is instrumented (a flag lost on the way would make a clean run meaningless)
so=$(ls src/rnncore/backends/cython/_recurrent*.so)
nm -D "$so" > symbols.txt  # into a file: `grep -q` closing a pipe early fails the pipeline
for symbol in __asan_init __ubsan_handle_; do
    grep -q "$symbol" symbols.txt || { echo "sanitize: $so lacks $symbol" >&2; exit 1; }
done
echo "sanitize: built in $((SECONDS - start)) s"

# The extension's ASan runtime must be loaded before the interpreter's allocations;
# CPython's own allocations live until exit, so leak detection would only report those.
export LD_PRELOAD="$(gcc -print-file-name=libasan.so)"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export RNNCORE_BACKEND=cython
test_start=$SECONDS
set +e
files=(tests/backends/test_cython_kernels.py tests/backends/test_backends.py tests/core/test_cells_functional.py
       tests/core/test_fuzz_layers.py tests/core/test_gradcheck.py tests/core/test_layer_api.py)
# the saved-context tests run concurrent backward calls through the kernels
files+=(tests/core/test_contexts.py tests/backends/test_cython_corridor.py tests/backends/test_engine.py
        tests/core/test_stream.py)
PYTHONPATH="$work/src" python -m pytest -q -p no:cacheprovider "${files[@]}" -k "not numba" "$@" 2>&1 | tee test.log
status=${PIPESTATUS[0]}
set -e
reports=$(grep -c -E "ERROR: AddressSanitizer|runtime error:" test.log || true)
echo "sanitize: pytest exit $status, $reports sanitizer reports, tests $((SECONDS - test_start)) s, total $((SECONDS - start)) s"
[ "$status" -eq 0 ] && [ "$reports" -eq 0 ]
