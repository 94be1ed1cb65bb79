#!/usr/bin/env bash
# Quick start, command 1: set up the locked environment and run the API with one worker on the
# embedded default (SQLite + a server-less broker under ./data). Extra arguments go to `dfmscd serve`.
source "$(dirname "$0")/_bootstrap.sh"
exec python3 -m uv run --frozen --extra service dfmscd serve "$@"
