# Sourced by the quick-start scripts: installs uv if missing and syncs the locked environment.
# Works on a fresh machine that has only Python 3.11 (and its pip).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if ! python3 -m uv --version >/dev/null 2>&1; then
  echo "[dfmscd] installing uv" >&2
  python3 -m pip install --quiet --disable-pip-version-check uv
fi
UV="python3 -m uv"
export UV_PYTHON_DOWNLOADS=never
# Byte-compile on first import: without .pyc files every process re-compiles torch (10-20 s each).
unset PYTHONDONTWRITEBYTECODE
$UV sync --frozen --quiet --extra service
