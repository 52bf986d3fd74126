#!/usr/bin/env bash
# Mutation testing of the pure modules and the replay rules (config: [tool.mutmut] in pyproject.toml).
# mutmut copies the tree into mutants/ and mutates only there, so the live gateway/ is never touched.
# Two workers at most: the machine is shared, and the selected tests take about two seconds in all.
# Usage: scripts/mutation.sh; then .venv/bin/mutmut show NAME for the diff of a survivor.
set -euo pipefail
cd "$(dirname "$0")/.."
# A fresh copy each time: mutmut's cache can keep a verdict from before a test was added (a run takes ~30 s).
rm -rf mutants
.venv/bin/mutmut run --max-children "${MUTMUT_CHILDREN:-2}"
.venv/bin/mutmut results
