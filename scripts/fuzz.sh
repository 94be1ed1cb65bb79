#!/usr/bin/env bash
# Long schema fuzz: start a live `dfmscd serve` (embedded SQLite + broker under a fresh data dir,
# unless DFMSCD_* variables point elsewhere), create an API key, and run the schemathesis CLI
# over the whole OpenAPI document for FUZZ_SECONDS. Zero 5xx and schema-conforming responses
# are required; the reports (junit + ndjson) and the server log land in FUZZ_OUT.
#
#   scripts/fuzz.sh                      # 300 s on 127.0.0.1:8765
#   FUZZ_SECONDS=900 FUZZ_PORT=9000 scripts/fuzz.sh
#
# The checks are those of tests/hardening/test_schema_fuzz.py (see its docstring for why the
# others are excluded). Exit code: schemathesis' (0 = no failure).
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_SECONDS=${FUZZ_SECONDS:-300}
FUZZ_PORT=${FUZZ_PORT:-8765}
FUZZ_WORKERS=${FUZZ_WORKERS:-1}  # 2 crashed inside schemathesis 4.32.5's coverage phase (SystemError in ast)
FUZZ_OUT=${FUZZ_OUT:-$(mktemp -d -t dfmscd-fuzz-XXXXXX)}
CHECKS=not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance

mkdir -p "$FUZZ_OUT"
export DFMSCD_DATA_DIR=${DFMSCD_DATA_DIR:-$FUZZ_OUT/data}
export DFMSCD_TORCH_THREADS=${DFMSCD_TORCH_THREADS:-1}
# The per-key rate limit would answer most of a long run with 429 (declared, and tested by
# tests/hardening/test_limits.py); lift it so the fuzzer reaches the handlers.
export DFMSCD_RATE_LIMIT_PER_MINUTE=${DFMSCD_RATE_LIMIT_PER_MINUTE:-0}

KEY=$(uv run --frozen --extra service dfmscd keys create --name fuzz 2>/dev/null | tail -n 1)
uv run --frozen --extra service dfmscd serve --port "$FUZZ_PORT" >"$FUZZ_OUT/server.log" 2>&1 &
SERVER_PID=$!
trap 'kill "$SERVER_PID" 2>/dev/null; wait "$SERVER_PID" 2>/dev/null || true' EXIT

for _ in $(seq 1 120); do
  if curl -fsS "http://127.0.0.1:$FUZZ_PORT/healthz" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then echo "fuzz: server exited; see $FUZZ_OUT/server.log" >&2; exit 1; fi
  sleep 1
done

echo "fuzz: ${FUZZ_SECONDS}s against http://127.0.0.1:$FUZZ_PORT, reports in $FUZZ_OUT" >&2
set +e
uv run --frozen --extra service schemathesis run "http://127.0.0.1:$FUZZ_PORT/openapi.json" \
  -H "Authorization: Bearer $KEY" \
  --checks "$CHECKS" \
  --max-time "$FUZZ_SECONDS" \
  --workers "$FUZZ_WORKERS" \
  --mode all \
  --request-timeout 30 \
  --suppress-health-check all \
  --report junit,ndjson --report-dir "$FUZZ_OUT" \
  --no-color
rc=$?
set -e
fivexx=$(grep -c '" 5[0-9][0-9] ' "$FUZZ_OUT/server.log" || true)
echo "fuzz: schemathesis exit $rc; 5xx lines in the server access log: $fivexx" >&2
exit "$rc"
