#!/usr/bin/env bash
# Create .venv from requirements.txt if it is missing, refresh it if requirements.txt changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.requirements.sha256
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating $VENV (first run: PyTorch and friends, a few minutes)"
  "$PY" -m venv "$VENV"
  rm -f "$STAMP"
fi
if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  echo "==> installing requirements.txt into $VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -r requirements.txt
  # compile UMAP's numba kernels once into their on-disk cache, so the first map a user asks for
  # takes seconds, not the ~30 s of CPU a cold compilation costs
  "$VENV/bin/python" -c "import sys; sys.path.insert(0, '.'); from ood_core.embedding import warm_umap; \
print(f'==> UMAP kernels compiled and cached ({warm_umap():.0f} s)')"
  echo "$want" > "$STAMP"
fi
