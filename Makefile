# The two commands: `make run` (the dashboard on http://localhost:8501) and `make test` (the whole suite).
VENV := .venv
PORT ?= 8501
# test files run in this many worker processes (pytest-xdist), each file whole in one worker: 2 fit the 2 cores,
# with one thread each (tests/conftest.py), the browser tests first; TEST_WORKERS=0 runs the suite in this process
TEST_WORKERS ?= 2

.PHONY: run test test-fast venv bench clean

venv:
	@bash scripts/ensure_venv.sh

run: venv
	$(VENV)/bin/streamlit run app.py --server.port $(PORT)

test: venv
	$(VENV)/bin/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# the library's unit tier only (no pages, no browser, nothing marked slow): well under a minute
test-fast: venv
	$(VENV)/bin/python -m pytest -m "unit and not slow" -q

bench: venv
	PYTHONPATH=. $(VENV)/bin/python scripts/benchmark.py

clean:
	rm -rf data/cache artifacts .pytest_cache
