"""Third sweep: orpo/simpo after the BOS fix, more ppo settings."""
import multiprocessing as mp
import os
import sys
import time

import sweep as S
import sweep2 as S2

B4 = {"batch_size": 64, "n_prompts": 640}
P16 = {"prompts_per_rollout": 16, "minibatch_size": 32}
C = {
    "o0": ("orpo", {"lr": 1e-4}), "o6": ("orpo", {"lr": 5e-5, **B4}), "o7": ("orpo", {"lr": 1e-4, **B4}),
    "o8": ("orpo", {"lr": 2e-5, **B4}),
    "s0": ("simpo", {"lr": 1e-4}), "s6": ("simpo", {"lr": 5e-5, **B4}), "s7": ("simpo", {"lr": 1e-4, **B4}),
    "s8": ("simpo", {"lr": 2e-5, **B4}),
    "p6": ("ppo", {"lr": 1e-4, "kl_coef": 0.0, "vf_lr": 3e-3, **P16}), "p7": ("ppo", {"lr": 5e-5, **P16}),
    "p8": ("ppo", {"lr": 1e-4, "prompts_per_rollout": 16, "minibatch_size": 16}),
    "p9": ("ppo", {"lr": 2e-4, "epochs": 1, **P16}), "p1": ("ppo", {"lr": 1e-4, **P16}),
}
for name, (alg, hp) in C.items():
    S.CONFIGS[name] = dict(steps=20, prec="bf16", hp={alg: hp}, alg=alg)
S2.C = C

if __name__ == "__main__":
    jobs = [(n, f, s, C[n][0]) for s in [1, 2, 3, 4] for f in S.FAMS for n in C]
    out = open(os.path.join(os.environ.get("OUT", "."), "sweep3.csv"), "a")
    t0 = time.time()
    with mp.get_context("fork").Pool(int(sys.argv[1]), initializer=S.init) as pool:
        for line in pool.imap_unordered(S.work, jobs):
            out.write(line + "\n")
            out.flush()
    print("done", len(jobs), round(time.time() - t0))
