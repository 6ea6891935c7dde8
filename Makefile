# The README's commands. Each (re)creates .venv with plain pip when it is missing or
# older than requirements.txt / pyproject.toml.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test browser report lab student-lab lint clean

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

test: $(STAMP) browser
	$(PY) -m ruff check regptq_lite tests notebooks
	$(PY) -m pytest -q

# The report's browser test uses Debian's chromium; install it when we can (root with apt-get).
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	echo "note: chromium is not installed, so the browser test of the report will be skipped"

report: $(STAMP)
	$(PY) -m regptq_lite report

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

# A class works in the copies without solutions; an existing student/ (a student's work) is left as it is.
student-lab: $(STAMP)
	[ -d student ] || $(PY) -m regptq_lite student
	$(VENV)/bin/jupyter lab student/

lint: $(STAMP)
	$(PY) -m ruff check regptq_lite tests notebooks
	$(PY) -m ruff format --check regptq_lite tests notebooks

clean:
	rm -rf $(VENV) reports student
