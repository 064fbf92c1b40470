#!/usr/bin/env bash
# ON THE 2-GPU MACHINE (device tool, kind nvidia-h200-x2), in the repo root:
#   bash benchmarks/fsdp/run_gpu.sh equiv [validate.py args]   # foreground, <= 570 s; carry [".whl"] first
#   bash benchmarks/fsdp/run_gpu.sh big   [validate.py args]
#   bash benchmarks/fsdp/run_gpu.sh start PHASE [validate.py args]  # background (setsid: survives the call
#                                                                  # while the machine stays warm), no cap
#   bash benchmarks/fsdp/run_gpu.sh wait PHASE [WAIT_S]   # wait for a background phase, print its log tail
#   bash benchmarks/fsdp/run_gpu.sh collect                # every finished phase -> $OUT/fsdp/<phase>/
# Installs the wheels of .whl/ (tools/gpu/prepare.sh) into /tmp/site once per machine (the same
# /tmp/site as tools/gpu/remote.sh deps), then runs benchmarks/fsdp/validate.py for one phase.
# Foreground phases stop launching runs at --time-cap 480 s; `timeout 570` ends everything.
# Results -> <out>/<phase>/validate.{json,csv,md}; weights and logs stay in /tmp/fsdp-work-<phase>
# (the 9B base alone is 18 GB).
set -uo pipefail
SITE=/tmp/site
BG=/tmp/fsdp-out   # background phases write here; `collect` copies it to $OUT
export PYTHONPATH="$SITE:$(pwd)/src" PATH="$SITE/bin:$PATH" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
       OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 \
       PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True   # less fragmentation with many processes per GPU
die() { echo "run_gpu.sh: $*" >&2; exit 2; }
install() {  # the same wheels and /tmp/site as tools/gpu/remote.sh (its 'wheels' step), once per machine
  python3 -c 'import trl, datasets, reasoning_gym, jsonschema' 2>/dev/null && return 0
  bash tools/gpu/remote.sh wheels || die "installing .whl failed (carry .whl, made here by tools/gpu/prepare.sh)"
}
running() { [ -f "/tmp/fsdp-$1.pid" ] && kill -0 "$(cat "/tmp/fsdp-$1.pid")" 2>/dev/null; }
cmd=${1:-equiv}
shift || true
case "$cmd" in
  equiv|big)
    install; nvidia-smi -L
    timeout 570 python3 benchmarks/fsdp/validate.py --phase "$cmd" --time-cap 480 \
      --work "/tmp/fsdp-work-$cmd" --out "${OUT:-benchmarks/fsdp/results}/$cmd" "$@" ;;
  start)
    phase=${1:?start PHASE}; shift
    install; nvidia-smi -L
    running "$phase" && die "phase $phase is already running"
    mkdir -p "$BG"
    setsid nohup python3 benchmarks/fsdp/validate.py --phase "$phase" --time-cap "${CAP:-1500}" \
      --work "/tmp/fsdp-work-$phase" --out "$BG/$phase" "$@" > "/tmp/fsdp-$phase.log" 2>&1 < /dev/null &
    echo $! > "/tmp/fsdp-$phase.pid"
    echo "started $phase (pid $(cat "/tmp/fsdp-$phase.pid"), log /tmp/fsdp-$phase.log)" ;;
  wait)
    phase=${1:?wait PHASE}; wait_s=${2:-540}; t0=$SECONDS
    while running "$phase" && (( SECONDS - t0 < wait_s )); do sleep 15; done
    running "$phase" && echo "$phase still running" || echo "$phase finished"
    grep -E '^\{"tag"|^\|' "/tmp/fsdp-$phase.log" | tail -30 ;;
  collect)
    [ -n "${OUT:-}" ] || die "OUT is not set (the device tool sets it)"
    mkdir -p "$OUT/fsdp" && cp -r "$BG"/. "$OUT/fsdp/" 2>/dev/null
    for f in /tmp/fsdp-*.log; do [ -f "$f" ] && tail -c 200000 "$f" > "$OUT/fsdp/$(basename "$f")"; done
    # every run's first error lines (a launcher's own traceback comes last and hides the rank's
    # cause) and its last lines
    for l in /tmp/fsdp-work-*/*/train.log; do [ -f "$l" ] || continue
      echo "== $l"; grep -n -m 12 -E -i "error|out of memory|exception" "$l"; echo "-- tail"
      grep -v "Loading weights" "$l" | tail -25; done > "$OUT/fsdp/train_logs_tail.txt" 2>/dev/null
    ls -laR "$OUT/fsdp" | head -40 ;;
  *) die "usage: run_gpu.sh equiv|big [ARGS] | start PHASE [ARGS] | wait PHASE [WAIT_S] | collect" ;;
esac
