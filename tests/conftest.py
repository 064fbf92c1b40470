"""Shared fixtures: a tiny task, tiny base models (random and briefly trained)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]


# `make test` runs the suite on 2 pytest-xdist workers (Makefile: -n 2 --dist loadgroup), scheduled
# by SuiteScheduling below. A work unit, run whole by one worker, is a test file (so a module fixture,
# a DAG run, torchrun launches, runs once), except the groups in XDIST_GROUPS. Units are handed out
# longest first (LONGEST_FIRST, serial seconds on 2 cores), then the rest in file order.
XDIST_GROUPS = {
    # the real one-node Slurm cluster (tools/local-slurm/up) in one worker only, never two at once;
    # test_cluster.py's slurm-profile dry runs, meant "with no cluster present", before it there
    "test_cluster.py": "slurm",
    "test_slurm_cluster.py": "slurm",
    # the session fixture trained_base (~70 s of training) built once, not once per worker
    "test_samples.py": "trained_base",
    "test_subnetwork.py": "trained_base",
    "test_training.py": "trained_base",
}
LONGEST_FIRST = ["slurm",  # 400 s, most of it waiting on Slurm jobs and a 1-minute time limit
                 "test_reruns.py", "trained_base", "test_gpu.py", "test_lint.py", "test_dag.py",  # 190-100 s
                 "test_figures_report.py", "test_fsdp_cpu.py", "test_distributed_ppo_prime.py",
                 "test_tokenizer_tasks.py", "test_kill_resume.py", "test_own_algorithms.py",
                 "test_checkpoints.py", "test_entropy.py", "test_analysis_tables.py", "test_figures.py"]  # 45-17 s


def xdist_unit(nodeid: str) -> str:
    """The work unit of a test: its file's group, else its file."""
    file = nodeid.split("::", 1)[0]
    return XDIST_GROUPS.get(Path(file).name, file)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """For --dist loadgroup: the units above. (xdist 3.8's own loadgroup reads xdist_group marks
    into the node id, which pytest 9.2 no longer lets it change: every test was its own unit, and
    both workers started a Slurm cluster.)"""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    rank = {u: i for i, u in enumerate(LONGEST_FIRST)}

    class SuiteScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return xdist_unit(nodeid)

        def _assign_work_unit(self, node: Any) -> None:
            for unit in sorted(self.workqueue, key=lambda u: rank.get(Path(u).name, len(rank))):  # stable
                self.workqueue.move_to_end(unit)
            super()._assign_work_unit(node)

    return SuiteScheduling(config, log)


@pytest.fixture(scope="session", autouse=True)
def _threads() -> None:
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def task():
    from rlsparsity.tasks import get_task

    return get_task("tiny_arith", n_train=600, n_test=64, seed=7)


def make_random_base(folder: Path, task, family: str = "llama", seed: int = 0) -> Path:
    """A randomly initialised tiny base stored like a real one (bf16 + tokenizer)."""
    from rlsparsity.families import build_tiny
    from rlsparsity.modeling import save_model
    from rlsparsity.tokenizer import build_tokenizer, special_ids, task_corpus

    tok = build_tokenizer(task_corpus(task))
    model = build_tiny(family, len(tok), special_ids(tok), seed=seed)
    save_model(model, tok, folder, "bf16")
    return folder


@pytest.fixture(scope="session")
def random_base(tmp_path_factory, task) -> Path:
    return make_random_base(tmp_path_factory.mktemp("random_base"), task)


@pytest.fixture(scope="session")
def trained_base(tmp_path_factory, task) -> Path:
    """A tiny llama trained until it answers ~15% of validation problems: on-policy
    preference data and group-relative advantages need correct and wrong samples."""
    from rlsparsity.base import train_tiny_base
    from rlsparsity.modeling import write_json

    out = tmp_path_factory.mktemp("trained_base")
    m = train_tiny_base("llama", task, out, seed=0, max_steps=1500, batch_size=32, lr=3e-3,
                        eval_every=100, eval_n=64, target_accuracy=0.15, log=lambda *a: None)
    write_json(out / "metrics.json", m)
    return out
