# Two commands on a fresh machine:  `make demo`  and  `make test`.
# CUDA users: `make TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" demo`
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.nbtune-installed

.PHONY: setup demo test test-unit bench lab clean

setup: $(STAMP)

# torch goes first so the `torch>=2.4` range in pyproject is already met and no CUDA build is pulled.
$(STAMP): pyproject.toml requirements/assets.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev,ui,tune,explain,export]"
	$(PY) -m pip install -q --no-deps -r requirements/assets.txt
	touch $(STAMP)

demo: setup
	$(VENV)/bin/nbtune demo

# Every tier that runs on a CPU machine: unit, integration and browser (Debian chromium at /usr/bin/chromium;
# the browser tests skip, saying so, where it is missing). GPU tests skip without CUDA.
test: setup
	$(PY) -m pytest -m "not gpu or gpu" -p no:cacheprovider

test-unit: setup
	$(PY) -m pytest -p no:cacheprovider

# JupyterLab on the notebooks, opened on the tour (as root, e.g. in a container, Jupyter needs --allow-root).
LAB_ARGS ?=
lab: setup
	$(VENV)/bin/jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS) notebooks/00_tour.ipynb

bench: setup
	$(PY) bench/engine_vs_trainer.py

clean:
	rm -rf $(VENV) build *.egg-info
