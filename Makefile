# The README's commands. Each (re)creates .venv with plain pip when it is missing or
# older than requirements.txt / pyproject.toml.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test report lab lint clean

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m ruff check regptq_lite tests
	$(PY) -m pytest -q

report: $(STAMP)
	$(PY) -m regptq_lite report

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

lint: $(STAMP)
	$(PY) -m ruff check regptq_lite tests
	$(PY) -m ruff format --check regptq_lite tests

clean:
	rm -rf $(VENV) reports student
