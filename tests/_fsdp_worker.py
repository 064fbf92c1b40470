"""Worker of tests/test_fsdp_cpu.py, started by ``torchrun --nproc_per_node 2`` (gloo on CPU).

argv: MODE BASE OUT RESULT_JSON [STOP_AFTER]
  gather  shard a tiny llama with torch's FSDP2 ``fully_shard`` and check that
          ``trl_algos.gathered_state_dict`` returns the full, unsharded weights on rank 0
          (None on rank 1), and that the FSDP branches of the final save and the weight series
          write exactly those weights; then train dpo (4 steps) with ``stop_after`` (a kill at
          step 2)
  resume  train the same dpo run again: it resumes from the sharded-run checkpoint
Every rank records the files it writes under OUT's parent (open for writing, os.replace/rename,
safetensors save_file, torch.save) into RESULT_JSON.<rank>.
"""

from __future__ import annotations

import builtins
import json
import os
import sys
from pathlib import Path

MODE, BASE, OUT, RESULT = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
STOP = int(sys.argv[5]) if len(sys.argv) > 5 else None
RANK = int(os.environ["RANK"])
WRITES: list[str] = []


def _note(path: object) -> None:
    """Record a write under the test's folder (OUT's parent), relative to it."""
    p = os.path.abspath(str(path))
    if p.startswith(str(OUT.parent.resolve()) + os.sep):
        WRITES.append(os.path.relpath(p, OUT.parent.resolve()))


_open, _replace, _rename = builtins.open, os.replace, os.rename


def _spy_open(file, mode="r", *a, **kw):  # noqa: ANN001, ANN002, ANN003
    if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+"):
        _note(file)
    return _open(file, mode, *a, **kw)


def _spy_replace(src, dst, *a, **kw):  # noqa: ANN001, ANN002, ANN003
    _note(dst)
    return _replace(src, dst, *a, **kw)


def _spy_rename(src, dst, *a, **kw):  # noqa: ANN001, ANN002, ANN003
    _note(dst)
    return _rename(src, dst, *a, **kw)


builtins.open, os.replace, os.rename = _spy_open, _spy_replace, _spy_rename
import safetensors.torch  # noqa: E402

_save_file = safetensors.torch.save_file


def _spy_save_file(tensors, filename, *a, **kw):  # noqa: ANN001, ANN002, ANN003
    _note(filename)
    return _save_file(tensors, filename, *a, **kw)


safetensors.torch.save_file = _spy_save_file

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

_torch_save = torch.save


def _spy_torch_save(obj, f, *a, **kw):  # noqa: ANN001, ANN002, ANN003
    if isinstance(f, (str, os.PathLike)):
        _note(f)
    return _torch_save(obj, f, *a, **kw)


torch.save = _spy_torch_save

from rlsparsity.algorithms import get_algorithm  # noqa: E402
from rlsparsity.algorithms import trl_algos as T  # noqa: E402
from rlsparsity.algorithms.common import Interrupted, TrainSpec  # noqa: E402
from rlsparsity.grid import Run  # noqa: E402
from rlsparsity.tasks import get_task  # noqa: E402

torch.set_num_threads(1)
dist.init_process_group("gloo")
result: dict[str, object] = {"rank": RANK, "world_size": dist.get_world_size()}

if MODE == "gather":
    from torch.distributed.fsdp import fully_shard

    from rlsparsity.modeling import load_model, state_dict_for_save

    ref = load_model(BASE, "fp32")
    sharded = load_model(BASE, "fp32")
    for layer in sharded.model.layers:
        fully_shard(layer)
    fully_shard(sharded)
    local = next(iter(sharded.parameters()))
    result["param_type"] = type(local).__name__
    result["local_rows"] = int(local.to_local().shape[0])
    result["full_rows"] = int(local.shape[0])
    got = T.gathered_state_dict(sharded, "fp32-master")
    if RANK == 0:
        want = state_dict_for_save(ref, "fp32-master")
        result["keys_equal"] = sorted(got) == sorted(want)
        result["key_diff"] = sorted(set(got) ^ set(want))
        result["n_keys"] = len(got)
        result["bf16"] = all(t.dtype == torch.bfloat16 for t in got.values())
        result["max_abs_diff"] = max(float((got[k].float() - want[k].float()).abs().max()) for k in want)
    else:
        result["got_none"] = got is None
    # the FSDP branches of the final save and the weight series (as under accelerate's FSDP)
    from rlsparsity.modeling import load_tokenizer

    saved = OUT.parent / (OUT.name + "_fsdp_save")
    ss = TrainSpec(run=Run("llama", "grpo", "on_policy", "fp32-master", 1), base_dir=BASE, out_dir=saved,
                   task=None)  # type: ignore[arg-type]
    os.environ["ACCELERATE_USE_FSDP"] = "true"
    T._save_final(sharded, load_tokenizer(BASE), ss, RANK == 0)
    T._save_series(sharded, ss, 1, RANK == 0)
    os.environ.pop("ACCELERATE_USE_FSDP")
    dist.barrier()
    if RANK == 0:
        back = load_model(saved, "fp32")
        want = {k: v.float() for k, v in state_dict_for_save(ref, "fp32-master").items()}
        got_sd = back.state_dict()
        result["saved_equal"] = all(torch.equal(got_sd[k], want[k]) for k in want)
        result["saved_files"] = sorted(p.name for p in saved.iterdir())
        series = safetensors.torch.load_file(str(saved / "checkpoints/step-000001/model.safetensors"))
        result["series_equal"] = sorted(series) == sorted(want) and all(
            torch.equal(series[k].float(), want[k]) for k in want)

    # dpo/kto's reference under FSDP (trl_algos._reference): sharded per decoder layer, frozen, and
    # the same function as the unsharded model
    from torch.distributed.fsdp import FSDPModule

    from rlsparsity.algorithms.distributed import sharded_reference

    shref = sharded_reference(BASE, "fp32", "cpu")
    result["ref_layers_sharded"] = all(isinstance(m, FSDPModule) for m in shref.model.layers)
    result["ref_root_sharded"] = isinstance(shref, FSDPModule)
    result["ref_frozen"] = not any(p.requires_grad for p in shref.parameters())
    w = shref.model.layers[0].mlp.up_proj.weight
    result["ref_local_rows"], result["ref_full_rows"] = int(w.to_local().shape[0]), int(w.shape[0])
    ids = torch.arange(1, 13).reshape(2, 6)
    with torch.no_grad():
        result["ref_logits_max_diff"] = float((shref(input_ids=ids).logits - ref(input_ids=ids).logits).abs().max())
    # TRL patches the reference with its fused LM head (add_fused_lm_head) and scores through it
    from trl.trainer.utils import add_fused_lm_head

    plain = load_model(BASE, "fp32")
    add_fused_lm_head(shref)
    add_fused_lm_head(plain)
    with torch.no_grad():
        a = shref(input_ids=ids, labels=ids, fused_lm_head=True).log_probs
        b = plain(input_ids=ids, labels=ids, fused_lm_head=True).log_probs
    result["ref_fused_logp_max_diff"] = float((a - b).abs().max())

task = get_task("tiny_arith", n_train=600, n_test=64, seed=7)
hp = {"batch_size": 4, "n_prompts": 32, "k": 2, "lr": 1e-3}
spec = TrainSpec(run=Run("llama", "dpo", "off_policy", "fp32", 1), base_dir=BASE, out_dir=OUT, task=task,
                 steps=4, checkpoint_every=2, hparams=hp, stop_after=STOP)
try:
    stats = get_algorithm("dpo")(spec)
    result["stats"] = {k: stats[k] for k in ("steps", "resumed_from", "processes", "sharding")}
except Interrupted as e:
    result["interrupted"] = str(e)
result["writes"] = sorted(set(WRITES))
Path(f"{RESULT}.{RANK}").write_text(json.dumps(result))
dist.barrier()
dist.destroy_process_group()
