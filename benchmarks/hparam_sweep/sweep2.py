"""Second sweep: per-algorithm settings for the weak algorithms (one algorithm per config)."""
import multiprocessing as mp
import os
import sys
import time

import sweep as S

B4 = {"batch_size": 64, "n_prompts": 640}
C = {
    "o1": ("orpo", {"lr": 2e-5, **B4}),
    "o2": ("orpo", {"lr": 5e-5, "beta": 1.0, **B4}),
    "o3": ("orpo", {"lr": 2e-5, "k": 8, **B4}),
    "o4": ("orpo", {"lr": 1e-5, **B4}),
    "o5": ("orpo", {"lr": 5e-5, **B4}),
    "s1": ("simpo", {"lr": 2e-5, **B4}),
    "s2": ("simpo", {"lr": 5e-5, "beta": 2.5, "simpo_gamma": 1.25, **B4}),
    "s3": ("simpo", {"lr": 2e-5, "k": 8, **B4}),
    "s4": ("simpo", {"lr": 1e-5, **B4}),
    "s5": ("simpo", {"lr": 5e-5, "beta": 10.0, "simpo_gamma": 0.5, **B4}),
    "p1": ("ppo", {"lr": 1e-4, "prompts_per_rollout": 16, "minibatch_size": 32}),
    "p2": ("ppo", {"lr": 2e-4, "prompts_per_rollout": 8, "minibatch_size": 16}),
    "p3": ("ppo", {"lr": 1e-4, "prompts_per_rollout": 16, "minibatch_size": 32, "kl_coef": 0.01}),
    "p4": ("ppo", {"lr": 1e-4, "prompts_per_rollout": 16, "minibatch_size": 32, "vf_lr": 3e-3}),
    "p5": ("ppo", {"lr": 1e-4, "prompts_per_rollout": 8, "minibatch_size": 16, "epochs": 1}),
    "k1": ("kto", {"lr": 5e-5, "k": 8, **B4}),
    "k2": ("kto", {"lr": 3e-5, **B4}),
    "k3": ("kto", {"lr": 5e-5, **B4}),
    "f1": ("sft", {"lr": 5e-5, **B4}),
    "f2": ("sft", {"lr": 1e-4, "batch_size": 16}),
    "d1": ("dpo", {"lr": 1e-4, "k": 8, **B4}),
    "d2": ("dpo", {"lr": 5e-5, "k": 8, **B4}),
    "g1": ("grpo", {"lr": 1e-4, "batch_size": 64}),
    "r1": ("prime", {"lr": 1e-4, "prompts_per_rollout": 16, "minibatch_size": 32}),
}
for name, (alg, hp) in C.items():
    S.CONFIGS[name] = dict(steps=20, prec="bf16", hp={alg: hp}, alg=alg)

if __name__ == "__main__":
    names = sys.argv[2].split(",") if len(sys.argv) > 2 else list(C)
    seeds = [1, 2, 3, 4]
    jobs = [(n, f, s, C[n][0]) for s in seeds for f in S.FAMS for n in names]
    out = open(os.path.join(os.environ.get("OUT", "."), "sweep2.csv"), "a")
    t0 = time.time()
    with mp.get_context("fork").Pool(int(sys.argv[1]), initializer=S.init) as pool:
        for i, line in enumerate(pool.imap_unordered(S.work, jobs)):
            out.write(line + "\n")
            out.flush()
            if i % 50 == 0:
                print(i, len(jobs), round(time.time() - t0), line, flush=True)
    print("done", len(jobs), round(time.time() - t0))
