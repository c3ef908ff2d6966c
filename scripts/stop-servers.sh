#!/usr/bin/env bash
# Stop every model server and front proxy that local deploys started from this checkout.
set -u
cd "$(dirname "$0")/.."
pkill -f "$(pwd)/.venv/bin/python -m model_server" && echo "stopped model servers" || echo "no model servers running"
