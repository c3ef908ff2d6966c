#!/usr/bin/env bash
# Stop every model server and front proxy that local deploys started from this checkout.
# The interpreter is this checkout's venv python, whichever name started it (python, python3, python3.11).
set -u
cd "$(dirname "$0")/.."
pkill -f "^$(pwd)/\.venv/bin/python[0-9.]* -m model_server" && echo "stopped model servers" || echo "no model servers running"
