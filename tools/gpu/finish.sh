#!/usr/bin/env bash
# ON THE GPU MACHINE, the last call of a lease that the DAG cannot finish in: wait up to WAIT_S
# for the DAG (and, past that, for a running `analyze` job: the family tables are the DAG's
# tail and worth ANALYZE_S more seconds), stop it, then diff (+ rank on the GPU) every finished
# run (grid, token-entropy and subnetwork runs) against the base, overlap of seed pairs, and
# `remote.sh collect`; fp32 runs are also evaluated with their weights rounded to bf16. Used for the partial H200 runs in docs/smollm2/.
#   bash tools/gpu/finish.sh 390
set -u
WAIT_S=${1:-400}
ANALYZE_S=${ANALYZE_S:-180}
R=${RESULTS:-results/smollm2-gpu}
export PYTHONPATH="/tmp/site:$(pwd)/src" PATH="/tmp/site/bin:$PATH" HF_HUB_OFFLINE=1 OMP_NUM_THREADS=4 PYTHONUNBUFFERED=1
t0=$SECONDS
dag_running() { [ -f /tmp/rls-dag.pid ] && kill -0 "$(cat /tmp/rls-dag.pid)" 2>/dev/null; }
n_runs() { find "$R/runs" "$R/entropy" "$R/subnetwork" -name run.json 2>/dev/null | wc -l; }
while dag_running && (( SECONDS - t0 < WAIT_S )); do sleep 30; echo "[$(date +%T)] run.json: $(n_runs)"; done
t1=$SECONDS
while dag_running && pgrep -f "rlsparsity analyze-family" > /dev/null && (( SECONDS - t1 < ANALYZE_S )); do
  sleep 15; echo "[$(date +%T)] waiting for analyze-family"; done
# stop the DAG and its jobs (patterns that do not match this script's own command line)
pkill -TERM -f "snakemake --profile"; pkill -TERM -f "snakemake .* --profile"; sleep 2
pkill -TERM -f "rlsparsity.cli"; sleep 3; pkill -KILL -f "rlsparsity.cli"
B=$R/base/smollm2-135m
CFG=${CONFIG:-config/smollm2-gpu.yaml}
# fp32 runs: held-out accuracy of the stored weights and of the same weights rounded to bf16 (the
# storage rounding of fp32-master), same problems, same batches: the direct test of "fp32 DPO gains
# nothing and fp32-master DPO does only because bf16 rounding undoes most of the update"
for d in $(find "$R/runs" -path '*/fp32/seed*' -name run.json -printf '%h\n' 2>/dev/null | sort); do
  [ -f "$d/model.safetensors" ] || continue
  mkdir -p "$d/diff"
  # and base + only the updates that rounding erases / keeps (rlsparsity.update_parts), unrounded
  ( for how in raw round_bf16 below_half_ulp above_half_ulp; do
      case $how in raw) flag=() ;; round_bf16) flag=(--round-bf16) ;;
        *) flag=(--update-part "${how//_/-}" --base "$B") ;; esac
      rlsparsity eval "$d" --task-from "$CFG" --device cuda --json "${flag[@]}" \
        > "$d/diff/eval_$how.json" 2> "$d/diff/eval_$how.err" || rm -f "$d/diff/eval_$how.json"; done ) &
done
n=0
for d in $(find "$R/runs" "$R/entropy" "$R/subnetwork" -name run.json -printf '%h\n' 2>/dev/null | sort); do
  [ -f "$d/model.safetensors" ] && [ ! -f "$d/diff/diff.json" ] || continue
  mkdir -p "$d/diff"
  ( rlsparsity diff "$B" "$d" --out "$d/diff" --json --threads 4 --quiet > "$d/diff/diff.json" 2> "$d/diff/diff.err"
    rlsparsity rank "$B" "$d" --json --quiet --device cuda > "$d/diff/rank.json" 2> "$d/diff/rank.err"
    # sparsity over the run's checkpoints (they stay here): the DAG's dynamics table, main grid only
    case "$d" in "$R/runs/"*) rlsparsity dynamics "$B" "$d" --out "$d/diff/dynamics.csv" --threads 4 \
        > /dev/null 2> "$d/diff/dynamics.err" || rm -f "$d/diff/dynamics.csv" ;; esac ) &
  n=$((n+1)); (( n % 8 == 0 )) && wait
done; wait
for d1 in $(find "$R/runs" "$R/entropy" -type d -name seed1); do d2=${d1%seed1}seed2
  [ -f "$d1/diff/mask.safetensors" ] && [ -f "$d2/diff/mask.safetensors" ] && \
    rlsparsity overlap "$d1/diff" "$d2/diff" --json > "$d1/diff/overlap_seed2.json" 2>&1
done
echo "diffed $n runs in $((SECONDS - t0)) s total"
bash tools/gpu/remote.sh collect
