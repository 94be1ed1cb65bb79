#!/usr/bin/env bash
# System packages the test suite uses, from Debian's registry when missing: Chromium + ChromeDriver
# (the dashboard's browser tests, through Selenium) and jq (the README walk-through test).
set -uo pipefail
missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
command -v jq >/dev/null || missing+=(jq)
((${#missing[@]})) || exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "[dfmscd] missing ${missing[*]}: install them (the browser and walk-through tests need them)" >&2
  exit 1
fi
echo "[dfmscd] installing ${missing[*]}" >&2
apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
