#!/usr/bin/env bash
# Installs what the browser tests need on a fresh Debian 12 machine; safe to run again.
# Called from .ci/run before the README's test command. mesa-vulkan-drivers (for the native
# reference runs on lavapipe) is installed by .ci/run itself.
set -euo pipefail
web="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$web")"

rustup target add wasm32-unknown-unknown

# The CLI must equal the wasm-bindgen crate in Cargo.lock. No --locked: the CLI's own lock file
# pins a webpki-roots release the registry does not serve (docs in DESIGN.md, section 5).
want="$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' "$root/Cargo.lock")"
have="$(wasm-bindgen --version 2>/dev/null | awk '{print $2}' || true)"
if [ "$have" != "$want" ]; then
  cargo install wasm-bindgen-cli --version "$want"
fi

if ! command -v chromium >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends chromium || { apt-get update && apt-get install -y --no-install-recommends chromium; }
fi

cd "$web"
npm ci --no-audit --no-fund
