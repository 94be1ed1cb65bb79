#!/usr/bin/env bash
# Quick start, command 2: set up the locked environment, make sure PostgreSQL and Redis answer,
# then run the whole test suite. Extra arguments go to pytest.
source "$(dirname "$0")/_bootstrap.sh"
bash scripts/services.sh || { [ "${CI:-}" = true ] && exit 1; echo "[dfmscd] services missing: service tests will fail" >&2; }
exec python3 -m uv run --frozen pytest "$@"
