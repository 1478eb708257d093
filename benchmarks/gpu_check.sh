#!/usr/bin/env bash
# The GPU check of issues #10 and #20, prepared for a session that is lent a GPU
# (docs/benchmarks.md, "On a GPU"). At most GPU_CHECK_TOTAL seconds (480), every compile
# included, by a plan computed from measured compile times (benchmarks/gpu_plan.py; print it
# without a GPU: `bash benchmarks/gpu_check.sh --dry-run`):
#   (0) the environment (versions, GPU);
#   (1) prepare, in parallel and stopped at its budget: one warm process per benchmark
#       configuration (fills Triton's and torch.compile's caches once), the C++ kernel's build,
#       then the CUDA tests (`pytest tests -k cuda -n 4`; GPU_TESTS_K changes the selection);
#   (2) the benchmark configurations one by one, most informative first (k = 5 at n = 1000 and
#       10^4, then k = 1, k = 20, n = 10^6; float32, then bfloat16), each in a fresh process
#       stopped at its budget, results.json rewritten after each;
#   (3) a summary: versions, test outcome, the plan against the seconds each step took, the
#       targets table and the forward+backward tables.
#
#   bash benchmarks/gpu_check.sh "$OUT"              # the check, files into $OUT
#   bash benchmarks/gpu_check.sh --dry-run           # the plan: steps, budgets, total (no GPU)
#   GPU_CHECK_TOTAL=200 bash benchmarks/gpu_check.sh "$OUT"   # a shorter rerun
#
# Writes into the folder given as $1 (default $OUT, else benchmarks/results/gpu):
# environment.txt, plan.txt, gpu_tests.log, warm.log, steps.json (each step's budget and
# seconds), results.json, results.md, benchmarks.png. Runs from the source tree
# (PYTHONPATH=src plus the repository root); needs only torch, triton and pytest. Optional
# packages travel as wheels in .whl/ at the repository root (liger-kernel: see
# docs/benchmarks.md); they are installed into /tmp/smoothtopk-site without the network, and a
# contender whose package is missing is reported as skipped. Exit status: 0 when the tests
# passed and the benchmark steps ran (targets missed are reported, not failures), 1 when the
# tests failed or were stopped, or no CUDA device is visible, 2 for a bad argument.
set -u -o pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
started=$(date +%s)
total=${GPU_CHECK_TOTAL:-480}
PY=${PYTHON:-python3}
if [ "${1:-}" = --dry-run ]; then
  cd "$root" && PYTHONPATH="$root/src:$root" "$PY" -m benchmarks.gpu_plan --dry-run --total "$total"
  exit $?
fi
case "${1:-}" in -*) echo "gpu_check.sh: error: unknown option '$1'" >&2; exit 2 ;; esac
out=${1:-${OUT:-$root/benchmarks/results/gpu}}
mkdir -p "$out" && out=$(cd "$out" && pwd) || exit 2
cd "$root" || exit 2
deadline=$((started + total - 15))  # the summary's 15 s (gpu_plan.SUMMARY_S) after it

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

echo "== plan and run: benchmarks.gpu_plan, deadline in $((deadline - $(date +%s))) s"
timeout -k 5 "$((deadline - $(date +%s)))" "$PY" -m benchmarks.gpu_plan run --out "$out" \
  --deadline "$deadline" --total "$total" 2>&1 | tee "$out/plan.txt"
plan_rc=$?
[ "$plan_rc" = 124 ] && echo "the plan ran past its deadline and was stopped"
if [ ! -s "$out/results.md" ] && [ -s "$out/results.json" ]; then  # stopped: what it measured
  "$PY" -m benchmarks.report "$out/results.json" --md "$out/results.md" \
    --png "$out/benchmarks.png" --title "smoothtopk GPU benchmarks (gpu_check.sh, stopped)"
fi

echo "== summary"
cat "$out/environment.txt"
tests_rc=$("$PY" -c "import json, sys; steps = json.load(open(sys.argv[1]))['steps']
print(next((s['tests_exit'] for s in steps if s['step'] == 'prepare'), 'not run'))" \
  "$out/steps.json" 2>/dev/null || echo "not run")
echo "tests (exit status $tests_rc):"
[ -s "$out/gpu_tests.log" ] && grep -E "^(FAILED|ERROR|SKIPPED) |[0-9]+ (passed|failed|skipped|deselected|errors?)|no tests ran" \
  "$out/gpu_tests.log" | tail -n 20
echo "steps (budget s -> seconds taken):"
"$PY" -c "import json, sys
for s in json.load(open(sys.argv[1]))['steps']:
    name = s['step'] if s['step'] != 'bench' else f\"n={s['n']} k={s['k']} {s['dtype']}\"
    print(f\"  {name}: {s['budget_s']} -> {s['seconds']}\")" "$out/steps.json" 2>/dev/null
if [ -s "$out/results.md" ]; then
  awk '/^## /{show = ($0 ~ /^## (Targets|forward\+backward)/)} show' "$out/results.md"
  grep -E "^Not run" "$out/results.md"
else
  echo "no results.md: see plan.txt"
fi
echo "$(( $(date +%s) - started )) s in all (limit $total s)"
ls -l "$out"
case "$tests_rc" in 0 | 5) ;; *) exit 1 ;; esac  # pytest's 5: no test selected
case "$plan_rc" in 0) ;; *) exit 1 ;; esac
