#!/usr/bin/env bash
# Create the virtual environment .venv, install the requirements and run the
# whole pipeline (convert, generate, run_ml, results, plots) through pipeline.py.
# Arguments go to pipeline.py: see `./quickstart.sh --help`.
set -euo pipefail
cd "$(dirname "$0")"
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
exec .venv/bin/python pipeline.py "$@"
