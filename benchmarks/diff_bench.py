"""Benchmark `rlsparsity diff` against the paper script's approach and a raw read.

Builds a synthetic Llama-shaped bf16 pair (sharded, with model.safetensors.index.json;
tuned = base with a fraction of entries moved by one bf16 ulp) in a temp folder, then
measures wall time and peak RSS, each in its own subprocess, of:

  (a) rlsparsity diff BASE TUNED --json --out DIR (mask + CSV written too)
  (b) the paper script's approach: AutoModelForCausalLM.from_pretrained both models,
      subtract parameter by parameter, concatenate, torch.isclose(atol=1e-5)
  (c) a raw read of both checkpoints' bytes (64 MiB reads)

Peak RSS and CPU time (user + system) of a subprocess are read with
getrusage(RUSAGE_CHILDREN) in a fresh wrapper process, so each number belongs to one
command. Files are read from the page cache (they were just written and (c) runs first).
Each command runs ``--repeat`` times, interleaved (raw, diff, raw, diff, ...) so that they
share the machine's load; medians are printed with the ratios diff / raw read (wall and
CPU). With CUDA available, (a) also runs with ``--device cuda`` and
RLSPARSITY_DIFF_GPU_KERNEL=1 (the GPU kernel; plain ``--device cuda`` runs the CPU kernel, see
``rlsparsity.analysis.diff.kernel_device``) and its counts are checked against the CPU run's.
``--json-out`` writes everything measured (samples, medians, load).

    python benchmarks/diff_bench.py [--params 0.95e9] [--changed 0.2] [--skip-paper]
    python benchmarks/diff_bench.py --make-pair DIR --params 7e9   # only write DIR/base, DIR/tuned
    python benchmarks/diff_bench.py --pair DIR                       # benchmark an existing pair

``--params`` of 3e9 or more uses Llama-7B widths (hidden 4096, intermediate 11008), smaller
counts TinyLlama widths (2048, 5632); the layer count is chosen to match ``--params``.
``--device cuda`` generates the pair on the GPU (fast; same bits as on CPU are not promised).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WRAP = ("import resource, subprocess, sys, time; t = time.perf_counter(); rc = subprocess.call(sys.argv[1:]); "
        "r = resource.getrusage(resource.RUSAGE_CHILDREN); "
        "print('BENCH', rc, time.perf_counter() - t, r.ru_maxrss, r.ru_utime + r.ru_stime, file=sys.stderr)")

PAPER = """
import sys, torch
from transformers import AutoModelForCausalLM
a = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.bfloat16)
b = AutoModelForCausalLM.from_pretrained(sys.argv[2], dtype=torch.bfloat16)
diffs = []
with torch.no_grad():
    for (n1, p1), (n2, p2) in zip(a.named_parameters(), b.named_parameters()):
        if p1.shape != p2.shape:
            continue
        diffs.append((p1 - p2).flatten())
    d = torch.cat(diffs)
    close = torch.isclose(d, torch.zeros_like(d), rtol=0, atol=1e-5)
print("paper sparsity@1e-5", close.float().mean().item())
"""

RAW = """
import sys, pathlib
buf = bytearray(64 << 20)
n = 0
for folder in sys.argv[1:]:
    for f in sorted(pathlib.Path(folder).glob('*.safetensors')):
        with open(f, 'rb', buffering=0) as fh:
            while (k := fh.readinto(buf)):
                n += k
print('raw bytes', n)
"""


def llama_shapes(hidden: int, inter: int, layers: int, vocab: int) -> list[tuple[str, tuple[int, ...]]]:
    out = [("model.embed_tokens.weight", (vocab, hidden))]
    for i in range(layers):
        p = f"model.layers.{i}."
        out += [(p + "input_layernorm.weight", (hidden,)), (p + "post_attention_layernorm.weight", (hidden,))]
        out += [(p + f"self_attn.{m}_proj.weight", (hidden, hidden)) for m in "qkvo"]
        out += [(p + "mlp.gate_proj.weight", (inter, hidden)), (p + "mlp.up_proj.weight", (inter, hidden)),
                (p + "mlp.down_proj.weight", (hidden, inter))]
    return out + [("model.norm.weight", (hidden,)), ("lm_head.weight", (vocab, hidden))]


def build_pair(root: Path, params: float, changed: float, shard_bytes: int = 1 << 30, device: str = "cpu") -> int:
    """Write base/ and tuned/ Llama-shaped bf16 checkpoints; returns the parameter count."""
    import torch
    from safetensors.torch import save_file

    hidden, inter, vocab = (4096, 11008, 32000) if params >= 3e9 else (2048, 5632, 32000)
    per_layer = 4 * hidden * hidden + 3 * hidden * inter + 2 * hidden
    layers = max(1, round((params - 2 * vocab * hidden) / per_layer))
    shapes = llama_shapes(hidden, inter, layers, vocab)
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
           "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": 16,
           "num_key_value_heads": 16, "vocab_size": vocab, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
           "tie_word_embeddings": False, "torch_dtype": "bfloat16", "bos_token_id": 1, "eos_token_id": 2}
    gen = torch.Generator(device=device).manual_seed(0)
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in shapes:
        nbytes = 2 * int(torch.tensor(shape).prod())
        if size + nbytes > shard_bytes and shards[-1]:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += nbytes
    for side in ("base", "tuned"):
        (root / side).mkdir(parents=True, exist_ok=True)
        (root / side / "config.json").write_text(json.dumps(cfg))
    weight_map, total = {}, 0
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        base, tuned = {}, {}
        for name, shape in shard:
            w = (torch.randn(shape, generator=gen, device=device) * 0.02).bfloat16()
            flip = torch.rand(shape, generator=gen, device=device) < changed
            base[name] = w.cpu()
            tuned[name] = (w.view(torch.int16) ^ flip.to(torch.int16)).view(torch.bfloat16).cpu()  # one ulp
            del w, flip
            weight_map[name] = fname
            total += base[name].numel()
        save_file(base, root / "base" / fname, metadata={"format": "pt"})
        save_file(tuned, root / "tuned" / fname, metadata={"format": "pt"})
        del base, tuned
    for side in ("base", "tuned"):
        (root / side / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": 2 * total}, "weight_map": weight_map}))
    return total


def measure(cmd: list[str], env: dict[str, str]) -> dict:
    """Exit code, wall seconds, CPU seconds, peak RSS GiB and stdout of one command in a fresh wrapper."""
    p = subprocess.run([sys.executable, "-c", WRAP, *cmd], capture_output=True, text=True, env=env)
    line = [ln for ln in p.stderr.splitlines() if ln.startswith("BENCH")][-1].split()
    return {"rc": int(line[1]), "wall": float(line[2]), "rss": int(line[3]) / 2**20, "cpu": float(line[4]),
            "stdout": p.stdout.strip(), "stderr": p.stderr[-2000:] if int(line[1]) else ""}


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=float, default=0.95e9)
    ap.add_argument("--changed", type=float, default=0.2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each command (medians are reported)")
    ap.add_argument("--skip-paper", action="store_true", help="skip (b) (needs ~17 GB RAM at 0.85B)")
    ap.add_argument("--skip-cuda", action="store_true", help="no --device cuda run even where CUDA exists")
    ap.add_argument("--dir", help="work folder (default: a temp folder, removed afterwards)")
    ap.add_argument("--make-pair", metavar="DIR", help="only write the pair to DIR/base, DIR/tuned and exit")
    ap.add_argument("--pair", metavar="DIR", help="benchmark the existing pair DIR/base, DIR/tuned")
    ap.add_argument("--device", default="cpu", help="where --make-pair generates the random weights")
    ap.add_argument("--json-out", help="write the measurements here (JSON)")
    args = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if args.make_pair:
        t0 = time.perf_counter()
        n = build_pair(Path(args.make_pair), args.params, args.changed, device=args.device)
        print(f"built {n / 1e9:.3f}B-parameter bf16 pair in {time.perf_counter() - t0:.1f}s", flush=True)
        return 0
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(args.pair) if args.pair else Path(tmp)
        if not args.pair:
            t0 = time.perf_counter()
            n = build_pair(root, args.params, args.changed)
            print(f"built {n / 1e9:.3f}B-parameter bf16 pair in {time.perf_counter() - t0:.1f}s", flush=True)
        base, tuned = str(root / "base"), str(root / "tuned")

        def diff(device: str) -> list[str]:
            return ([sys.executable, "-m", "rlsparsity.analysis.cli", "diff", base, tuned, "--json", "--quiet",
                     "--out", str(Path(tmp) / f"out-{device}"), "--device", device]
                    + (["--threads", str(args.threads)] if args.threads else []))

        cmds = {"(c) raw read of both": ([sys.executable, "-c", RAW, base, tuned], env),
                "(a) rlsparsity diff": (diff("cpu"), env)}
        if _cuda() and not args.skip_cuda:
            cmds["(a) rlsparsity diff, GPU kernel"] = (diff("cuda"), {**env, "RLSPARSITY_DIFF_GPU_KERNEL": "1"})
        if not args.skip_paper:
            cmds["(b) paper script (HF load + isclose)"] = ([sys.executable, "-c", PAPER, base, tuned], env)
        load0 = os.getloadavg()
        samples: dict[str, list[dict]] = {k: [] for k in cmds}
        for _ in range(args.repeat):
            for name, (cmd, cmd_env) in cmds.items():
                samples[name].append(measure(cmd, cmd_env))
        load1 = os.getloadavg()
        for name, runs in samples.items():
            bad = [r for r in runs if r["rc"]]
            if bad:
                print(f"{name} failed (exit {bad[0]['rc']}):\n{bad[0]['stderr']}", file=sys.stderr)
                return 1
        med = {k: {f: _median([r[f] for r in v]) for f in ("wall", "cpu", "rss")} for k, v in samples.items()}
        summary = json.loads(samples["(a) rlsparsity diff"][0]["stdout"])
        counts_equal = {k: json.loads(v[0]["stdout"])["changed"] == summary["changed"]
                        for k, v in samples.items() if k.startswith("(a)")}
        print(f"\nrlsparsity: n_params={summary['n_params']} sparsity={summary['sparsity']}")
        if not args.skip_paper:
            print(samples["(b) paper script (HF load + isclose)"][0]["stdout"])
        raw = med["(c) raw read of both"]
        print(f"\n{os.cpu_count()} cores, threads {args.threads or 'default'}, {args.repeat} runs each (medians), "
              f"load average {load0[0]:.1f} -> {load1[0]:.1f}")
        print(f"{'what':40s} {'wall s':>8s} {'CPU s':>8s} {'peak RSS GiB':>13s} {'wall/raw':>9s} {'CPU/raw':>8s}")
        for name, m in med.items():
            print(f"{name:40s} {m['wall']:8.2f} {m['cpu']:8.2f} {m['rss']:13.2f} {m['wall'] / raw['wall']:9.2f} "
                  f"{m['cpu'] / raw['cpu']:8.2f}" + ("" if counts_equal.get(name, True) else "  COUNTS DIFFER"))
        if args.json_out:
            rec = {"n_params": summary["n_params"], "changed_fraction": args.changed, "cores": os.cpu_count(),
                   "threads": args.threads, "repeat": args.repeat, "loadavg_before": load0, "loadavg_after": load1,
                   "medians": med, "ratios_to_raw": {k: {"wall": m["wall"] / raw["wall"], "cpu": m["cpu"] / raw["cpu"]}
                                                     for k, m in med.items()},
                   "counts_equal_to_cpu": counts_equal, "changed": summary["changed"],
                   "samples": {k: [{f: r[f] for f in ("wall", "cpu", "rss")} for r in v] for k, v in samples.items()}}
            Path(args.json_out).write_text(json.dumps(rec, indent=1) + "\n")
    return 0 if all(counts_equal.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
