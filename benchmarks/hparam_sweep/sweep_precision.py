"""Per-precision learning-rate sweep on the VALIDATION split (issue 15).

    python sweep_precision.py run --bases DIR --out runs.csv [--jobs N] [--families llama,...]
        [--algorithms grpo,ppo,dpo,sft] [--precisions bf16,fp32-master,fp32] [--seeds 1,2]
        [--n-val 500] [--lrs '{"fp32": {"grpo": [1e-4, 3e-4]}}'] [--config config/config.yaml]
    python sweep_precision.py choose runs.csv --out chosen.csv

``run``: one tiny run per (family, algorithm, precision, lr, seed) (``fp32-master`` is scored from
the ``fp32`` run of the same lr and seed, rounded to bf16, when both are asked for) — the default config's steps and
hyperparameters with only the lr changed — scored on the first ``n_val`` validation problems
(``tinyrun.py``); appends one row per run, with the per-problem outcomes, to ``--out`` (a resumed
sweep skips the rows already there). ``choose``: per (precision, algorithm, lr), families and seeds
pooled, the validation gain over base with a 95 % paired bootstrap interval over problems and runs
(``rlsparsity.stats.paired_bootstrap``) and the run-mean sparsity; the chosen lr per (precision,
algorithm) is, among the lrs with the most runs (equal evidence: a partial sweep may have fewer seeds
for some lrs), the one with the highest LOWER interval bound (it learns with the most confidence)."""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing as mp
import os
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import tinyrun  # noqa: E402

LRS = {  # the defaults (grpo/ppo 1e-4, dpo/sft 5e-5), 3x below and above them for the fp32 trainings
    "bf16": {"grpo": [1e-4, 3e-4], "ppo": [1e-4, 3e-4], "dpo": [5e-5, 1.5e-4], "sft": [5e-5, 1.5e-4]},
    "fp32": {"grpo": [3e-5, 1e-4, 3e-4], "ppo": [3e-5, 1e-4, 3e-4], "dpo": [1.5e-5, 5e-5, 1.5e-4],
             "sft": [1.5e-5, 5e-5, 1.5e-4]},
}
LRS["fp32-master"] = LRS["fp32"]  # the same training (tinyrun.train_and_score), stored rounded
# The main grid's other algorithms run in bf16 only; their defaults (prime 1e-4, kto/orpo/simpo 5e-5)
# came from the issue-3 sweep, which scored on TEST. Validation grid: the default, 3x below and above.
LRS["bf16"].update({"prime": [3e-5, 1e-4, 3e-4], "kto": [1.5e-5, 5e-5, 1.5e-4], "orpo": [1.5e-5, 5e-5, 1.5e-4],
                    "simpo": [1.5e-5, 5e-5, 1.5e-4]})


def _csv_list(s: str) -> list[str]:
    return [x for x in s.split(",") if x]


def _job(args: tuple) -> list[dict]:
    cfg, bases, scratch, fam, alg, prec, lr, seed, n_val, master = args
    return tinyrun.train_and_score(cfg, Path(bases), Path(scratch), fam, alg, prec, lr, seed, n_val,
                                   also_master=master)


def cmd_run(a: argparse.Namespace) -> int:
    import yaml

    from rlsparsity.config import validate_config

    cfg = validate_config(yaml.safe_load(Path(a.config).read_text()))
    lrs = json.loads(a.lrs) if a.lrs else LRS
    done = set()
    out = Path(a.out)
    if out.exists():
        with out.open() as f:
            done = {(r["family"], r["algorithm"], r["precision"], float(r["lr"]), int(r["seed"]))
                    for r in csv.DictReader(f) if not r["error"]}
    precs = _csv_list(a.precisions)
    master = "fp32" in precs and "fp32-master" in precs  # scored from the fp32 runs (tinyrun.train_and_score)
    jobs = [(cfg, a.bases, a.scratch, fam, alg, prec, float(lr), int(s), a.n_val, master)
            for s in _csv_list(a.seeds) for fam in _csv_list(a.families) for prec in precs
            for alg in _csv_list(a.algorithms) for lr in lrs[prec][alg]
            if (fam, alg, prec, float(lr), int(s)) not in done and not (master and prec == "fp32-master")]
    new = not out.exists()
    with out.open("a", newline="") as f, mp.get_context("fork").Pool(a.jobs, initializer=tinyrun.init_worker) as pool:
        w = csv.DictWriter(f, fieldnames=tinyrun.FIELDS)
        if new:
            w.writeheader()
        for i, rows in enumerate(pool.imap_unordered(_job, jobs)):
            for row in rows:
                w.writerow(row)
                print(i + 1, len(jobs), row["family"], row["algorithm"], row["precision"], row["lr"], row["seed"],
                      row.get("val_delta"), row.get("sparsity"), row["seconds"], row["error"], flush=True)
            f.flush()
    return 0


def summarise(rows: list[dict], keys: tuple[str, ...]) -> list[dict]:
    """Per group of ``keys``: n runs, val gain with its paired bootstrap interval (problems and
    runs), mean sparsity with a t-interval over runs, mean accuracy of base and trained."""
    from rlsparsity.stats import mean_interval, paired_bootstrap

    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        if not r["error"]:
            groups[tuple(r[k] for k in keys)].append(r)
    out = []
    for k, rs in sorted(groups.items()):
        g = paired_bootstrap([(r["correct_trained"], r["correct_base"]) for r in rs])
        sp = mean_interval([float(r["sparsity"]) for r in rs])
        out.append({**dict(zip(keys, k, strict=True)), "n_runs": len(rs),
                    "val_base": round(sum(float(r["val_base"]) for r in rs) / len(rs), 4),
                    "val_trained": round(sum(float(r["val_trained"]) for r in rs) / len(rs), 4),
                    "gain": round(g.estimate, 4), "gain_lo": round(g.low, 4), "gain_hi": round(g.high, 4),
                    "sparsity": round(sp.estimate, 4), "sparsity_lo": round(sp.low, 4),
                    "sparsity_hi": round(sp.high, 4)})
    return out


def cmd_choose(a: argparse.Namespace) -> int:
    with open(a.runs) as f:
        rows = list(csv.DictReader(f))
    table = summarise(rows, ("precision", "algorithm", "lr"))
    best: dict[tuple[str, str], dict] = {}
    for t in table:
        k = (t["precision"], t["algorithm"])
        if k not in best or (t["n_runs"], t["gain_lo"]) > (best[k]["n_runs"], best[k]["gain_lo"]):
            best[k] = t
    for t in table:
        t["chosen"] = int(best[(t["precision"], t["algorithm"])] is t)
    with open(a.out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(table[0]))
        w.writeheader()
        w.writerows(table)
    for t in table:
        print(("* " if t["chosen"] else "  ") + " ".join(f"{k}={v}" for k, v in t.items() if k != "chosen"))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--bases", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--config", default=str(HERE.parents[1] / "config" / "config.yaml"))
    r.add_argument("--scratch", default="/tmp/rls-sweep-precision")
    r.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    r.add_argument("--families", default="llama")
    r.add_argument("--algorithms", default="grpo,ppo,dpo,sft")
    r.add_argument("--precisions", default="bf16,fp32-master,fp32")
    r.add_argument("--seeds", default="1,2")
    r.add_argument("--n-val", type=int, default=500)
    r.add_argument("--lrs", default="", help="JSON {precision: {algorithm: [lr, ...]}} (default: LRS)")
    c = sub.add_parser("choose")
    c.add_argument("runs")
    c.add_argument("--out", required=True)
    a = p.parse_args(argv)
    return cmd_run(a) if a.cmd == "run" else cmd_choose(a)


if __name__ == "__main__":
    sys.exit(main())
