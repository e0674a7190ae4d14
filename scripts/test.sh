#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests drive (the openai
# Python client, Chromium, playwright-core), then formatting, lints and `cargo test`.
# The default model is fetched by the tests themselves when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -c 'import openai' 2>/dev/null || python3 -m pip install --quiet 'openai>=1.40'
if ! command -v chromium >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
  else
    echo "install Chromium (the page test drives it)" >&2; exit 1
  fi
fi
command -v curl >/dev/null || { echo "install curl (the server tests use it)" >&2; exit 1; }
[ -d target/node/node_modules/playwright-core ] || \
  npm install --silent --no-audit --no-fund --prefix target/node 'playwright-core@1'

cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets -- -D warnings
cargo test --release --workspace
