#!/usr/bin/env bash
# The README's test command with N CPU-bound processes beside it (default 2): a busy machine must make the
# suite slower, never red. Prints the test result and the suite's own wall and CPU seconds (user+sys).
#   bash benchmarks/suite_under_load.sh [N]
set -uo pipefail
cd "$(dirname "$0")/.."
n="${1:-2}"
burners=()
for _ in $(seq "$n"); do
    python -c "while True: pass" &
    burners+=($!)
done
trap 'kill "${burners[@]}" 2>/dev/null' EXIT
/usr/bin/time -f "suite: %e s wall, %U s user + %S s sys, beside $n CPU-bound processes" python -m pytest -q
