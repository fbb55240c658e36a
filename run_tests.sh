#!/usr/bin/env bash
# Create the virtual environment .venv if needed, install the requirements and
# the test tools, and run the test suite. Arguments go to pytest.
# Tests on real MNIST read the IDX files from $MNIST_DIR (default ../shared/mnist);
# they are skipped when it is missing, and fail when CI=true.
set -euo pipefail
cd "$(dirname "$0")"
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
exec .venv/bin/python -m pytest "$@"
