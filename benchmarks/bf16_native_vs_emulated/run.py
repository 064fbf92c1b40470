"""Native vs emulated bf16 training at the default learning rates (issue 15).

    python run.py run --bases DIR --out runs.csv [--jobs N] [--families llama,qwen3,gpt2]
        [--algorithms grpo,ppo,dpo] [--seeds 1,2] [--n-val 500] [--config config/config.yaml]
    python run.py compare runs.csv --out summary.csv

``run``: every (family, algorithm, seed) is trained twice at the config's defaults, precision
``bf16``: ``RLSPARSITY_BF16_COMPUTE=fp32`` (emulated: fp32 tensors, fp32 gradients and AdamW moments,
parameters rounded to bf16 after every step, the CPU default) and ``=native`` (bf16 tensors,
gradients and AdamW moments, the CUDA default). Each run: validation accuracy of base and trained
model on the first ``n_val`` validation problems and the sparsity (share of entries unchanged,
exact) of the stored weights (``benchmarks/hparam_sweep/tinyrun.py``). Appends to ``--out``;
a resumed run skips the rows already there. ``--jobs N`` runs N single-threaded workers.

``compare``: per (algorithm, mode) and per algorithm over both modes' pairs: sparsity mean with a
95 % t-interval over runs (families x seeds), validation gain over base with a 95 % paired
bootstrap interval over problems and runs, and the native − emulated differences (sparsity:
t-interval over the paired runs; accuracy: paired bootstrap of the two trained models' outcomes).
``agree`` = both difference intervals contain 0."""

from __future__ import annotations

import argparse
import csv
import multiprocessing as mp
import os
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "hparam_sweep"))
import tinyrun  # noqa: E402

MODES = {"emulated": "fp32", "native": "native"}


def _csv_list(s: str) -> list[str]:
    return [x for x in s.split(",") if x]


def _job(args: tuple) -> dict:
    cfg, bases, scratch, fam, alg, seed, n_val, mode = args
    row = tinyrun.train_and_score(cfg, Path(bases), Path(scratch), fam, alg, "bf16", None, seed, n_val,
                                  bf16_mode=MODES[mode])[0]
    return {"mode": mode, **row}


def cmd_run(a: argparse.Namespace) -> int:
    import yaml

    from rlsparsity.config import validate_config

    cfg = validate_config(yaml.safe_load(Path(a.config).read_text()))
    out = Path(a.out)
    done = set()
    if out.exists():
        with out.open() as f:
            done = {(r["mode"], r["family"], r["algorithm"], int(r["seed"])) for r in csv.DictReader(f)
                    if not r["error"]}
    jobs = [(cfg, a.bases, a.scratch, fam, alg, int(s), a.n_val, mode)
            for s in _csv_list(a.seeds) for fam in _csv_list(a.families) for alg in _csv_list(a.algorithms)
            for mode in MODES if (mode, fam, alg, int(s)) not in done]
    new = not out.exists()
    with out.open("a", newline="") as f, mp.get_context("fork").Pool(a.jobs, initializer=tinyrun.init_worker) as pool:
        w = csv.DictWriter(f, fieldnames=["mode", *tinyrun.FIELDS])
        if new:
            w.writeheader()
        for i, row in enumerate(pool.imap_unordered(_job, jobs)):
            w.writerow(row)
            f.flush()
            print(i + 1, len(jobs), row["mode"], row["family"], row["algorithm"], row["seed"], row.get("val_delta"),
                  row.get("sparsity"), row["seconds"], row["error"], flush=True)
    return 0


def compare(rows: list[dict]) -> list[dict]:
    from rlsparsity.stats import mean_interval, paired_bootstrap

    ok = [r for r in rows if not r["error"]]
    by: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in ok:
        by[(r["algorithm"], r["mode"])].append(r)
    out = []
    for (alg, mode), rs in sorted(by.items()):
        g = paired_bootstrap([(r["correct_trained"], r["correct_base"]) for r in rs])
        s = mean_interval([float(r["sparsity"]) for r in rs])
        out.append({"algorithm": alg, "what": mode, "n_runs": len(rs), "sparsity": s.estimate, "sparsity_lo": s.low,
                    "sparsity_hi": s.high, "val_gain": g.estimate, "val_gain_lo": g.low, "val_gain_hi": g.high,
                    "seconds_mean": sum(float(r["seconds"]) for r in rs) / len(rs), "agree": ""})
    pairs: dict[str, list[tuple[dict, dict]]] = defaultdict(list)
    idx = {(r["mode"], r["family"], r["algorithm"], r["seed"]): r for r in ok}
    for (mode, fam, alg, seed), r in sorted(idx.items()):
        e = idx.get(("emulated", fam, alg, seed))
        if mode == "native" and e is not None:
            pairs[alg].append((r, e))
    for alg, ps in sorted(pairs.items()):
        s = mean_interval([float(n["sparsity"]) - float(e["sparsity"]) for n, e in ps])
        g = paired_bootstrap([(n["correct_trained"], e["correct_trained"]) for n, e in ps])
        agree = all(iv.low <= 0 <= iv.high for iv in (s, g)) if len(ps) > 1 else ""
        out.append({"algorithm": alg, "what": "native-emulated", "n_runs": len(ps), "sparsity": s.estimate,
                    "sparsity_lo": s.low, "sparsity_hi": s.high, "val_gain": g.estimate, "val_gain_lo": g.low,
                    "val_gain_hi": g.high,
                    "seconds_mean": sum(float(n["seconds"]) / float(e["seconds"]) for n, e in ps) / len(ps),
                    "agree": agree})
    return [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in out]


def cmd_compare(a: argparse.Namespace) -> int:
    with open(a.runs) as f:
        table = compare(list(csv.DictReader(f)))
    if not table:
        print(f"{a.runs}: no successful runs", file=sys.stderr)
        return 1
    with open(a.out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(table[0]))
        w.writeheader()
        w.writerows(table)
    for t in table:
        print(" ".join(f"{k}={v}" for k, v in t.items()))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--bases", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--config", default=str(HERE.parents[1] / "config" / "config.yaml"))
    r.add_argument("--scratch", default="/tmp/rls-bf16-modes")
    r.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    r.add_argument("--families", default="llama,qwen3,gpt2")
    r.add_argument("--algorithms", default="grpo,ppo,dpo")
    r.add_argument("--seeds", default="1,2")
    r.add_argument("--n-val", type=int, default=500)
    c = sub.add_parser("compare")
    c.add_argument("runs")
    c.add_argument("--out", required=True)
    a = p.parse_args(argv)
    return cmd_run(a) if a.cmd == "run" else cmd_compare(a)


if __name__ == "__main__":
    sys.exit(main())
