#!/usr/bin/env bash
# Snakemake runs this inside the freshly created envs/train.yaml env (--sdm conda), with the
# workflow directory (the repo root) as the working directory: install this checkout's
# package into the env. Editable, so code changes need no env rebuild; --no-deps because
# envs/train.yaml already pins every dependency (as pyproject.toml does).
set -euo pipefail
python -m pip install --no-deps -e .
