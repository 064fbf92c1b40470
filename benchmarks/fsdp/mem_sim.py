"""Peak memory per rank of one training step, 1 process vs FSDP2 on N, without a GPU.

What it is: torch's own FSDP2 memory tracker (``torch.distributed._tools.fsdp2_mem_tracker``)
run over fake tensors (``FakeTensorMode``: shapes and dtypes, no storage) and a fake process
group of N ranks (``fake`` backend: collectives return at once), so a 1B model "trains" on a
2-core CPU in seconds. The model is the random Llama of ``validate.py`` (its ``SHAPES``, the
~40-symbol vocabulary), sharded by the pipeline's own :func:`rlsparsity.algorithms.distributed.wrap`
with ``fsdp_units`` block or sublayer; the step is a plain causal-LM step (forward with labels,
backward, AdamW ``foreach``, ``zero_grad``), twice, the second with AdamW state allocated. The
tracker attributes every live tensor to parameters, gradients, optimiser state, activations,
all-gather and reduce-scatter buffers and temporaries, and keeps the peak.

What it is not: a GPU measurement. CUDA's caching allocator, streams (FSDP2 frees some
buffers only when a stream event passes) and TRL's own temporaries are absent. Yet on the 1b
shape in bf16 the H200 runs of ``validate.py`` (sft, grpo) peaked at 7,765 MiB on one GPU and
4,287 MiB per rank with FSDP on two (torch ``max_memory_allocated``), against 7,786 and 4,227
here, and the 9B fp32-master GRPO at 70,900 MiB per rank against 70,870. README.md here has the
numbers.

    python benchmarks/fsdp/mem_sim.py --shape 1b --precision bf16 --out mem_sim_1b.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
GIB = 2**30
#: the vocabulary of validate.py's character tokenizer of the one-digit task
VOCAB = 308


def shapes() -> dict[str, dict[str, int]]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from validate import SHAPES

    return SHAPES


def simulate(shape: str, precision: str, world: int, units: str, rows: int, seq_len: int) -> dict[str, Any]:
    """One configuration: ``world`` = 1 is the plain single-process run (no FSDP)."""
    import torch
    import torch.distributed as dist
    from torch._subclasses.fake_tensor import FakeTensorMode
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlsparsity.algorithms import distributed as D

    cfg = LlamaConfig(vocab_size=VOCAB, max_position_embeddings=512, tie_word_embeddings=False, **shapes()[shape])
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    if world > 1:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.testing._internal.distributed.fake_pg import FakeStore

        if not dist.is_initialized():
            dist.init_process_group("fake", rank=0, world_size=world, store=FakeStore())
        D._MESH = init_device_mesh("cpu", (world,))  # made outside fake mode (it reads real values)
    with FakeTensorMode():
        torch.set_default_dtype(dtype)
        try:
            model = LlamaForCausalLM(cfg)
        finally:
            torch.set_default_dtype(torch.float32)
        n_params = sum(p.numel() for p in model.parameters())
        if world > 1:
            model = D.wrap(D.Dist(0, world, "fsdp", "cpu", units), model)
        from torch.distributed.fsdp import FSDPModule

        n_units = sum(isinstance(m, FSDPModule) for m in model.modules())
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
        x = torch.randint(0, VOCAB, (max(1, rows // world), seq_len))
        if world > 1:
            from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker

            tracker = FSDPMemTracker(model, opt)
            tracker.track_inputs((x,))
        else:
            from torch.distributed._tools.mem_tracker import MemTracker

            tracker = MemTracker()
            tracker.track_external(model, opt)
        with tracker:
            for _ in range(2):
                model(input_ids=x, labels=x).loss.backward()
                opt.step()
                opt.zero_grad()
                tracker.reset_mod_stats()
        peak = next(iter(tracker.get_tracker_snapshot("peak").values()))
    parts_bytes = {str(getattr(k, "value", k)): int(v) for k, v in peak.items() if v}
    parts = {k: round(v / GIB, 4) for k, v in parts_bytes.items() if k != "Total"}
    layer = n_params / cfg.num_hidden_layers * dtype.itemsize / GIB  # ~ one decoder layer (the vocab is tiny)
    return {"shape": shape, "precision": precision, "world": world, "units": units if world > 1 else None,
            "rows_per_rank": max(1, rows // world), "seq_len": seq_len, "params": n_params,
            "fsdp_units_made": n_units, "peak_gib": round(parts_bytes["Total"] / GIB, 4), "parts_gib": parts,
            "parts_bytes": parts_bytes,
            "layer_gib": round(layer, 4)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", default="1b", help="a shape of validate.py (tiny, 1b, 6b, 9b)")
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--world", type=int, default=2, help="ranks of the FSDP runs (fake process group)")
    p.add_argument("--rows", type=int, default=8, help="global batch rows (validate.py: 8)")
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--units", default="block,sublayer", help="fsdp_units to simulate, comma-separated")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: one configuration per process
    p.add_argument("--out", type=Path, default=None, help="write the JSON here (atomically)")
    a = p.parse_args(argv)
    if a.shape not in shapes():
        print(f"mem_sim: unknown --shape {a.shape!r}: use one of {', '.join(sorted(shapes()))}", file=sys.stderr)
        return 2
    if a.one is not None:  # a fake process group is per process: each configuration gets its own
        world, units = a.one.split(":")
        print(json.dumps(simulate(a.shape, a.precision, int(world), units, a.rows, a.seq_len)))
        return 0
    import subprocess

    rows = []
    for world, units in [(1, "block"), *((a.world, u) for u in a.units.split(","))]:
        cmd = [sys.executable, __file__, "--shape", a.shape, "--precision", a.precision, "--rows", str(a.rows),
               "--seq-len", str(a.seq_len), "--one", f"{world}:{units}"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            last = (r.stderr.strip().splitlines() or ["no output"])[-1]
            print(f"mem_sim: the {world}-rank {units} run failed: {last}", file=sys.stderr)
            return 1
        rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
    single = rows[0]["peak_gib"]
    for row in rows:
        row["ratio_to_one_process"] = round(row["peak_gib"] / single, 4)
        if row["world"] > 1:  # what FSDP holds beyond an exact 1/N of the single process's peak
            row["unsharded_beyond_1_over_n_gib"] = round(row["peak_gib"] - single / row["world"], 4)
    out = {"what": "FSDP2 memory tracker on fake tensors and a fake process group (no GPU)",
           "command": " ".join(["python", "benchmarks/fsdp/mem_sim.py", *(argv if argv is not None else sys.argv[1:])]),
           "versions": _versions(), "rows": rows}
    text = json.dumps(out, indent=1)
    print(text)
    for row in rows:
        print(f"{row['world']} rank(s) {row['units'] or 'no FSDP'}: peak {row['peak_gib']:.3f} GiB, "
              f"ratio {row['ratio_to_one_process']:.4f}", file=sys.stderr)
    if a.out:
        from rlsparsity.config_slices import write_json_atomic

        write_json_atomic(a.out, out)
    return 0


def _versions() -> dict[str, str]:
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__}


if __name__ == "__main__":
    sys.exit(main())
