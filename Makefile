# The two commands: `make run` (the dashboard on http://localhost:8501) and `make test` (the whole suite).
VENV := .venv
PORT ?= 8501

.PHONY: run test venv bench clean

venv:
	@bash scripts/ensure_venv.sh

run: venv
	$(VENV)/bin/streamlit run app.py --server.port $(PORT)

test: venv
	$(VENV)/bin/python -m pytest

bench: venv
	PYTHONPATH=. $(VENV)/bin/python scripts/benchmark.py

clean:
	rm -rf data/cache artifacts .pytest_cache
