"""Hyperparameter sweep for issue 3: configs x families x seeds x algorithms, one run per task,
a process pool of CPU workers (OMP 1 each). Writes CSV rows to $OUT/sweep.csv.

Scored on the VALIDATION split (issue 15): each row's accuracies are greedy accuracy of the base
and of the trained run on the first cfg.train.eval_n validation problems, never the test split
that the pipeline reports. (The CSVs of sweeps 1-4 predate this and were scored on test.)
Row: config, family, algorithm, seed, val_base, val_trained, val_delta, seconds, seconds_per_step."""
import multiprocessing as mp
import os
import sys
import time

ALGS = ["ppo", "grpo", "dpo", "kto", "orpo", "simpo", "prime"]
FAMS = ["llama", "qwen3", "gpt2", "gpt_neox"]
SEEDS = [1, 2]


def knobs(lr=1e-4, b=1, kl=None, extra=None):
    hp = {
        "grpo": {"lr": lr, "batch_size": 16 * b},
        "ppo": {"lr": lr, "prompts_per_rollout": 4 * b, "minibatch_size": 8 * b},
        "prime": {"lr": lr, "prompts_per_rollout": 4 * b, "minibatch_size": 8 * b},
        **{
            a: {"lr": lr, "batch_size": 16 * b, "n_prompts": max(256, 16 * b * 20 // 2)}
            for a in ["dpo", "kto", "orpo", "simpo"]
        },
    }
    if kl is not None:
        hp["ppo"]["kl_coef"] = kl
    for a, d in (extra or {}).items():
        hp[a].update(d)
    return hp


CONFIGS = {
    "base": dict(steps=20, prec="bf16", hp=knobs()),
    "b4k8": dict(steps=20, prec="bf16", hp=knobs(b=4, extra={a: {"k": 8} for a in ["dpo", "kto", "orpo", "simpo"]})),
    "s40": dict(steps=40, prec="bf16", hp=knobs()),
    "b2": dict(steps=20, prec="bf16", hp=knobs(b=2)),
    "b4": dict(steps=20, prec="bf16", hp=knobs(b=4)),
    "lr2": dict(steps=20, prec="bf16", hp=knobs(lr=2e-4)),
    "lr2b2": dict(steps=20, prec="bf16", hp=knobs(lr=2e-4, b=2)),
    "lr2b4": dict(steps=20, prec="bf16", hp=knobs(lr=2e-4, b=4)),
    "lr.5b4": dict(steps=20, prec="bf16", hp=knobs(lr=5e-5, b=4)),
    "s40b2": dict(steps=40, prec="bf16", hp=knobs(b=2)),
    "b2nokl": dict(steps=20, prec="bf16", hp=knobs(b=2, kl=0.0)),
    "b4beta": dict(
        steps=20, prec="bf16", hp=knobs(b=4, extra={"dpo": {"beta": 0.5}, "kto": {"beta": 0.5}, "simpo": {"beta": 5.0}})
    ),
    "m_base": dict(steps=20, prec="fp32-master", hp=knobs()),
    "m_b2": dict(steps=20, prec="fp32-master", hp=knobs(b=2)),
    "m_b4": dict(steps=20, prec="fp32-master", hp=knobs(b=4)),
    "m_lr.3b4": dict(steps=20, prec="fp32-master", hp=knobs(lr=3e-5, b=4)),
    "lr1.5b4": dict(steps=20, prec="bf16", hp=knobs(lr=1.5e-4, b=4)),
}


def init():
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    from trl import GRPOTrainer, DPOTrainer  # noqa


def val_accuracy(folder, task, n):
    """Greedy accuracy of the stored model in ``folder`` on the first ``n`` validation problems."""
    from rlsparsity.evaluate import evaluate
    from rlsparsity.modeling import load_model, load_tokenizer

    return evaluate(load_model(folder, "fp32"), load_tokenizer(folder), task, task.val, n=n)["accuracy"]


_VAL_BASE = {}


def work(job):
    name, fam, seed, alg = job
    import yaml

    from rlsparsity import grid as G
    from rlsparsity.config import validate_config
    from rlsparsity.train import train_run

    c = CONFIGS[name]
    cfg = validate_config(yaml.safe_load(open(os.path.join(HERE, "cfg.yaml"))))
    res = f"/tmp/sw/{name}"
    os.makedirs(f"{res}/base", exist_ok=True)
    try:
        os.symlink(os.path.join(HERE, "bases", fam), f"{res}/base/{fam}")
    except FileExistsError:
        pass
    cfg["results"] = res
    cfg["train"]["steps"] = c["steps"]
    cfg["train"]["hparams"] = {alg: c["hp"][alg]}
    t = time.time()
    try:
        from rlsparsity.tasks import task_from_config

        run = G.Run(fam, alg, "on_policy", c["prec"], seed)
        rec = train_run(run, cfg)  # (its test-split numbers are not used here)
        task, n = task_from_config(cfg), cfg["train"]["eval_n"]
        if fam not in _VAL_BASE:
            _VAL_BASE[fam] = val_accuracy(G.base_dir(fam, res), task, n)
        vb, vt = _VAL_BASE[fam], val_accuracy(run.dir(res), task, n)
        row = [
            name,
            fam,
            alg,
            seed,
            vb,
            vt,
            round(vt - vb, 4),
            round(time.time() - t, 1),
            round(rec["seconds_per_step"], 3),
        ]
    except Exception as e:  # keep sweeping
        row = [name, fam, alg, seed, "", "", "", round(time.time() - t, 1), repr(e)[:80].replace(",", ";")]
    import shutil

    shutil.rmtree(G.Run(fam, alg, "on_policy", c["prec"], seed).dir(res), ignore_errors=True)
    return ",".join(map(str, row))


HERE = os.path.dirname(os.path.abspath(__file__))
if __name__ == "__main__":
    names = sys.argv[2].split(",") if len(sys.argv) > 2 else list(CONFIGS)
    jobs = [(n, f, s, a) for s in SEEDS for f in FAMS for a in ALGS for n in names]
    out = open(os.path.join(os.environ.get("OUT", "."), "sweep.csv"), "a")
    t0 = time.time()
    with mp.get_context("fork").Pool(int(sys.argv[1]), initializer=init) as pool:
        for i, line in enumerate(pool.imap_unordered(work, jobs)):
            out.write(line + "\n")
            out.flush()
            if i % 50 == 0:
                print(i, len(jobs), round(time.time() - t0), line, flush=True)
    print("done", len(jobs), round(time.time() - t0))
