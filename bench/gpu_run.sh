#!/usr/bin/env bash
# The one script to hand to a GPU host (its own python3 with torch + CUDA, no package registry):
# installs the wheels carried in .whl/ (pydantic and its dependencies, PyYAML; see bench/README.md)
# into a private target directory, runs the GPU-only checks of the fused update, then
# bench/gpu_bench.py under a timeout, and leaves the JSON and logs in $OUT.
#
#   OUT=/some/dir bash bench/gpu_run.sh [gpu_bench.py options]
#
# Environment: OUT (default ./gpu-bench-out), PYTHON (default python3), SITE (wheel target,
# default /tmp/rectrain-site), BENCH_TIMEOUT (seconds, default 290), RUN_TESTS (1: run the
# tests first, default 1).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu-bench-out}"
PY="${PYTHON:-python3}"
SITE="${SITE:-/tmp/rectrain-site}"
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl || exit 1
  export PYTHONPATH="$SITE:$PWD/api:$PWD/trainer${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD/api:$PWD/trainer${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
"$PY" -c "import torch, pydantic; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'pydantic', pydantic.VERSION)" \
  || { echo "gpu_run.sh: torch or pydantic missing (carry the wheels: bench/README.md)"; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee "$OUT/gpu.txt"
if [ "${RUN_TESTS:-1}" = 1 ]; then
  # --noconftest: the suite's root conftest wants the local cluster; these tests need none of it.
  timeout 120 "$PY" -m pytest --noconftest -p no:cacheprovider -q tests/trainer/test_fused_sparse.py \
    tests/trainer/test_trainer_precision.py tests/trainer/test_device_data.py tests/trainer/test_host_stream.py 2>&1 | tee "$OUT/tests.log"
fi
timeout "${BENCH_TIMEOUT:-290}" "$PY" bench/gpu_bench.py --json "$OUT/gpu_bench.json" "$@" 2>&1 | tee "$OUT/gpu_bench.log"
status=${PIPESTATUS[0]}
[ "$status" = 124 ] && echo "gpu_run.sh: the benchmark ran past ${BENCH_TIMEOUT:-290} s; $OUT/gpu_bench.json holds the cases done"
exit "$status"
