#!/usr/bin/env bash
# Installs what the tests need (scripts/setup.sh), lints, and runs the test suite.
# Arguments go to pytest: bash scripts/test.sh -k cli
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest "$@"
