import multiprocessing as mp
import sys

import sweep as S

P16 = {"prompts_per_rollout": 16, "minibatch_size": 32}
C = {"pA": ("ppo", {"lr": 1e-4, "lam": 1.0, **P16}), "pB": ("ppo", {"lr": 1e-4, "lam": 1.0, "vf_lr": 3e-3, **P16}),
     "pC": ("ppo", {"lr": 2e-4, "lam": 1.0, **P16}),
     "pD": ("ppo", {"lr": 1e-4, "lam": 1.0, "vf_lr": 3e-3, "epochs": 1, **P16})}
for name, (alg, hp) in C.items():
    S.CONFIGS[name] = dict(steps=20, prec="bf16", hp={alg: hp}, alg=alg)
if __name__ == "__main__":
    names = sys.argv[2].split(",")
    jobs = [(n, f, s, C[n][0]) for s in [1, 2, 3, 4] for f in S.FAMS for n in names]
    out = open("sweep4.csv", "a")
    with mp.get_context("fork").Pool(int(sys.argv[1]), initializer=S.init) as pool:
        for line in pool.imap_unordered(S.work, jobs):
            out.write(line + "\n")
            out.flush()
            print(line, flush=True)
