#!/usr/bin/env bash
# Runs a command with a moto server on a free loopback port (MOTO_URL exported), then stops it.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
if [ -n "${MOTO_URL:-}" ]; then exec "$@"; fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$root/.venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"${TMPDIR:-/tmp}/moto-$port.log" 2>&1 &
moto_pid=$!
trap 'kill $moto_pid 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  if curl -fsS "http://127.0.0.1:$port/moto-api/" >/dev/null 2>&1; then break; fi
  sleep 0.1
done
export MOTO_URL="http://127.0.0.1:$port"
"$@"
