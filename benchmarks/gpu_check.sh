#!/usr/bin/env bash
# The GPU check of issue #10, prepared for a session that is lent a GPU (docs/benchmarks.md,
# "On a GPU"). About 8 minutes on an H200, at most about 8.5:
#   (a) the tests that need CUDA (`pytest tests -k cuda`: they skip without a GPU; the Triton
#       interpreter suite is CI's), on 4 workers where pytest-xdist is installed, at most
#       GPU_TESTS_LIMIT seconds (180); GPU_TESTS_K changes the selection;
#   (b) the reduced benchmark grid (`python -m benchmarks.run --gpu-quick`): no configuration
#       is started after GPU_BENCH_BUDGET seconds (210), the whole at most that plus 75;
#   (c) a summary: versions, test outcome, the targets table and the forward+backward tables.
#
#   bash benchmarks/gpu_check.sh "$OUT"          # all three, files into $OUT
#   bash benchmarks/gpu_check.sh "$OUT" tests    # (a) and (c) only, e.g. for a rerun
#   bash benchmarks/gpu_check.sh "$OUT" bench    # (b) and (c) only
#
# Writes into the folder given as $1 (default $OUT, else benchmarks/results/gpu): environment.txt,
# gpu_tests.log, bench.log, results.json, results.md, benchmarks.png (6 files). Runs from the
# source tree (PYTHONPATH=src plus the repository root); needs only torch, triton and pytest.
# Optional packages travel as wheels in .whl/ at the repository root (liger-kernel: see
# docs/benchmarks.md); they are installed into /tmp/smoothtopk-site without the network, and
# a contender whose package is missing is reported as skipped. Exit status: 0 when the tests
# and the benchmark ran without failure (targets missed are reported, not failures), 1 when
# either failed or no CUDA device is visible, 2 for a bad argument.
set -u -o pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
phase=${2:-all}
case "$phase" in
  all | tests | bench) ;;
  *) echo "gpu_check.sh: error: the phase (\$2) must be all, tests or bench, got '$phase'" >&2; exit 2 ;;
esac
out=${1:-${OUT:-$root/benchmarks/results/gpu}}
mkdir -p "$out" && out=$(cd "$out" && pwd) || exit 2
cd "$root" || exit 2

PY=${PYTHON:-python3}
tests_limit=${GPU_TESTS_LIMIT:-180}
bench_budget=${GPU_BENCH_BUDGET:-210}
tests_k=${GPU_TESTS_K:-cuda}
export PYTHONUNBUFFERED=1 TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-/tmp/smoothtopk-ext}
unset SMOOTHTOPK_BACKEND TRITON_INTERPRET  # auto backends, compiled (not interpreted) Triton
path="$root/src:$root"
if compgen -G "$root/.whl/*.whl" >/dev/null; then
  if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/smoothtopk-site "$root"/.whl/*.whl; then
    path="/tmp/smoothtopk-site:$path"
  else
    echo "warning: the wheels in .whl/ did not install; their contenders will be skipped"
  fi
fi
export PYTHONPATH="$path${PYTHONPATH:+:$PYTHONPATH}"

echo "== environment"
{
  date -u +"%Y-%m-%dT%H:%M:%SZ"
  git -C "$root" log -1 --format="commit %h %s" 2>/dev/null
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
  "$PY" - <<'EOF'
import importlib.util, platform, torch, triton
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none visible"
print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}),"
      f" triton {triton.__version__}, GPU: {gpu}")
print("liger-kernel:", "importable" if importlib.util.find_spec("liger_kernel") else "missing")
EOF
} 2>&1 | tee "$out/environment.txt"
if ! "$PY" -c "import sys, torch; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
  echo "gpu_check.sh: no CUDA device is visible to torch; nothing to check" >&2
  exit 1
fi

tests_rc=skipped
if [ "$phase" != bench ]; then
  workers=()
  "$PY" -c "import xdist" 2>/dev/null && workers=(-n 4)
  echo "== (a) GPU tests: pytest tests -k \"$tests_k\" ${workers[*]}, at most $tests_limit s"
  timeout -k 10 "$tests_limit" "$PY" -m pytest -q -rfEs --maxfail=10 -p no:cacheprovider \
    "${workers[@]}" tests -k "$tests_k" 2>&1 | tee "$out/gpu_tests.log"
  tests_rc=$?
  [ "$tests_rc" = 124 ] && echo "the tests ran past $tests_limit s and were stopped"
fi

bench_rc=skipped
if [ "$phase" != tests ]; then
  echo "== (b) reduced GPU benchmark: benchmarks.run --gpu-quick --budget $bench_budget"
  rm -f "$out/results.json" "$out/results.md" "$out/benchmarks.png"
  timeout -k 10 "$((bench_budget + 75))" "$PY" -m benchmarks.run --gpu-quick \
    --budget "$bench_budget" --out "$out" --title "smoothtopk GPU benchmarks (gpu_check.sh)" \
    2>&1 | tee "$out/bench.log"
  bench_rc=$?
  if [ "$bench_rc" != 0 ] && [ -s "$out/results.json" ]; then  # stopped: report what it measured
    "$PY" -m benchmarks.report "$out/results.json" --md "$out/results.md" \
      --png "$out/benchmarks.png" --title "smoothtopk GPU benchmarks (gpu_check.sh, stopped)"
  fi
fi

echo "== (c) summary"
cat "$out/environment.txt"
if [ "$tests_rc" != skipped ]; then
  echo "tests (exit status $tests_rc):"
  grep -E "^(FAILED|ERROR|SKIPPED) |[0-9]+ (passed|failed|skipped|deselected|errors?)|no tests ran" \
    "$out/gpu_tests.log" | tail -n 20
  [ "$tests_rc" = 5 ] && echo "(no test matched -k \"$tests_k\": set GPU_TESTS_K)"
fi
if [ "$bench_rc" != skipped ]; then
  echo "benchmark (exit status $bench_rc):"
  if [ -s "$out/results.md" ]; then
    awk '/^## /{show = ($0 ~ /^## (Targets|forward\+backward)/)} show' "$out/results.md"
    grep -E "^Not run" "$out/results.md"
  else
    echo "no results.md: see bench.log"
  fi
fi
ls -l "$out"
case "$tests_rc" in 0 | 5 | skipped) ;; *) exit 1 ;; esac  # pytest's 5: no test selected
case "$bench_rc" in 0 | skipped) ;; *) exit 1 ;; esac
