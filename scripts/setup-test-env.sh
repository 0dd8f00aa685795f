#!/usr/bin/env bash
# Installs everything the tests need from this repo's own files into .venv (and Debian's
# prometheus when missing). Works on a fresh Debian/Ubuntu machine; CI runs it too.
set -euo pipefail
cd "$(dirname "$0")/.."
export LITELLM_LOCAL_MODEL_COST_MAP=True

if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends prometheus
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# [local] builds llama-cpp-python from source the first time (~6 min on 2 cores); pip caches it.
.venv/bin/python -m pip install -q -e '.[test,local,bench]'
