#!/usr/bin/env bash
# ON THE 2-GPU MACHINE (device tool, kind nvidia-h200-x2), in the repo root:
#   bash benchmarks/fsdp/run_gpu.sh equiv [validate.py args]   # carry [".whl"] on the first call
#   bash benchmarks/fsdp/run_gpu.sh big   [validate.py args]
# Installs the wheels of .whl/ (tools/gpu/prepare.sh) into /tmp/site once per machine, then runs
# benchmarks/fsdp/validate.py for one phase under a hard cap (validate stops launching runs at
# --time-cap 480 s; `timeout` kills everything at 570 s). Results -> $OUT/<phase>/validate.{json,csv,md};
# weights and logs stay in /tmp/fsdp-work-<phase> (the 9B base alone is 18 GB).
set -uo pipefail
SITE=/tmp/site
export PYTHONPATH="$SITE:$(pwd)/src" PATH="$SITE/bin:$PATH" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
       OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
if ! python3 -c 'import trl, datasets, reasoning_gym, jsonschema' 2>/dev/null; then
  [ -d .whl ] || { echo "run_gpu.sh: carry .whl (made here by tools/gpu/prepare.sh)" >&2; exit 2; }
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .whl/*.whl \
    || { echo "run_gpu.sh: pip install failed" >&2; exit 2; }
  # reasoning_gym imports pycosat at import time (only its zebra puzzles solve SAT): a stub that refuses
  python3 -c 'import pycosat' 2>/dev/null || \
    printf 'def solve(*a, **k):\n    raise RuntimeError("pycosat stub")\n\n\nitersolve = solve\n' > "$SITE/pycosat.py"
fi
nvidia-smi -L
phase=${1:-equiv}
shift || true
timeout 570 python3 benchmarks/fsdp/validate.py --phase "$phase" --time-cap 480 \
  --work "/tmp/fsdp-work-$phase" --out "${OUT:-benchmarks/fsdp/results}/$phase" "$@"
