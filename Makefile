# The two commands of the README: `make book` and `make test`.
# Each creates .venv when it is missing and installs everything in ONE pip resolution
# (torchattacks pins requests~=2.25.1; installing in steps leaves `pip check` broken).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PROFILE ?= cpu
SHARED_DATA := $(abspath ../shared/data)
export RNORM_DATA ?= $(if $(wildcard $(SHARED_DATA)),$(SHARED_DATA),$(abspath data))

.PHONY: book reproduce test bench venv clean parameters

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[book,dev]"
	$(PY) -m pip check
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

venv: $(VENV)/.installed

# Brings the book up to date: re-executes only the notebooks whose source, parameters or code changed.
book: venv
	$(VENV)/bin/rnorm book --profile $(PROFILE)

# Re-executes every notebook of the profile from scratch (trains whatever is not cached in RNORM_RUNS).
reproduce: venv
	$(VENV)/bin/rnorm book --profile $(PROFILE) --rerun

test: venv
	$(PY) -m pytest -q

# Rewrites each notebook's parameters cell from its params model (rnorm/experiments/: one source per
# parameter), then pairs the .ipynb. Run after changing a default or a description there.
parameters: venv
	$(PY) tools/write_parameters_cells.py

bench: venv
	$(PY) -m benchmarks

clean:
	rm -rf _build
