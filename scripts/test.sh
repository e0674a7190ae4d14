#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests drive (the openai
# Python client, Chromium, playwright-core, nginx, vllm-router), then formatting, lints,
# `cargo test`, and two replicas behind the routers (scripts/routers.sh).
# The default model is fetched by the tests themselves when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -c 'import openai' 2>/dev/null || python3 -m pip install --quiet 'openai>=1.40'
command -v vllm-router >/dev/null 2>&1 || python3 -m pip install --quiet 'vllm-router==0.1.17'
missing=""
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing="$missing nginx-light"
if [ -n "$missing" ]; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
  else
    echo "install$missing (the page test drives Chromium, the router check nginx)" >&2; exit 1
  fi
fi
export PATH="$PATH:/usr/sbin"
command -v curl >/dev/null || { echo "install curl (the server tests use it)" >&2; exit 1; }
[ -d target/node/node_modules/playwright-core ] || \
  npm install --silent --no-audit --no-fund --prefix target/node 'playwright-core@1'

cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets -- -D warnings
cargo test --release --workspace
cargo build --release -p kiln
bash scripts/routers.sh ./target/release/kiln
