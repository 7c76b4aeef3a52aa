# The two set-up commands: `make demo` (the main job on the sample app) and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup system test lint demo bench clean

setup: system $(STAMP)

system:
	@bash scripts/install-system
	@bash scripts/install-ci-tools

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

lint: setup
	$(VENV)/bin/ruff check pipeline_steps tests testbed bench demo
	$(VENV)/bin/mypy

# the suite in 4 pytest-xdist workers, then the tests marked serial (timing, load) alone; fails if either part does
test: setup lint
	$(VENV)/bin/pytest -q -p no:cacheprovider --durations=15 -n 4 --dist loadgroup -m "not serial"; \
	  parallel=$$?; $(VENV)/bin/pytest -q -p no:cacheprovider --durations=15 -m serial; \
	  serial=$$?; [ $$parallel -eq 0 ] && [ $$serial -eq 0 ]

demo: setup
	$(PY) -m demo

bench: setup  # every bench/ script (figures for the README)
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .demo bench/results
