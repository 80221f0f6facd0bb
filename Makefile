# The two commands: `make run` (the dashboard on http://localhost:8501) and `make test` (the whole suite).
VENV := .venv
PORT ?= 8501

.PHONY: run test test-fast venv bench clean

venv:
	@bash scripts/ensure_venv.sh

run: venv
	$(VENV)/bin/streamlit run app.py --server.port $(PORT)

test: venv
	$(VENV)/bin/python -m pytest

# the library's unit tier only (no pages, no browser, nothing marked slow): well under a minute
test-fast: venv
	$(VENV)/bin/python -m pytest -m "unit and not slow" -q

bench: venv
	PYTHONPATH=. $(VENV)/bin/python scripts/benchmark.py

clean:
	rm -rf data/cache artifacts .pytest_cache
