#!/usr/bin/env bash
# Stop every model server, vLLM server and front proxy that local deploys started from this checkout.
# The interpreter is this checkout's venv python (or vLLM's, under .local/vllm-venv), whichever name
# started it (python, python3, python3.11). vLLM stops its engine itself on SIGTERM.
set -u
cd "$(dirname "$0")/.."
stopped=""
pkill -f "^$(pwd)/\.venv/bin/python[0-9.]* -m model_server" && stopped="model servers"
pkill -f "^$(pwd)/\.local/vllm-venv/bin/python[0-9.]* -m vllm\.entrypoints" && stopped="${stopped:+$stopped and }vLLM servers"
if [ -n "$stopped" ]; then echo "stopped $stopped"; else echo "no model servers running"; fi
