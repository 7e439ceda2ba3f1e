#!/usr/bin/env bash
# Prints what the sidecar measured in each end-to-end cluster of the last run, from the logs the
# harness keeps in target/e2e-logs (one file per compose project, named after the test, the node
# image tag — pg15, pg17, pg18, off17, off18 — and v2 for Compose v2):
#   failovers: `failover complete … seconds=` (fence + promote + re-point, in the sidecar)
#   recoveries: `node recovered … method= seconds=` (ladder start → streaming and attached)
set -euo pipefail
cd "$(dirname "$0")/.."
shopt -s nullglob
printf '%-40s %-26s %s\n' cluster failovers_s recoveries_method:s
for f in "${1:-target/e2e-logs}"/*.log; do
  name=$(basename "$f" .log)
  fo=$({ grep -o 'failover complete .*seconds=[0-9.]*' "$f" || true; } | sed 's/.*seconds=//' |
    awk '{ printf "%s%.2f", (NR > 1 ? "," : ""), $1 }')
  rec=$({ grep 'node recovered' "$f" || true; } | sed -n 's/.*method="\?\([a-z]*\)"\?.*seconds=\([0-9.]*\).*/\1:\2/p' |
    awk -F: '{ printf "%s%s:%.1f", (NR > 1 ? "," : ""), $1, $2 }')
  [ -n "$fo$rec" ] || continue
  printf '%-40s %-26s %s\n' "$name" "${fo:--}" "${rec:--}"
done
figures="${1:-target/e2e-logs}/figures.txt"
if [ -s "$figures" ]; then
  echo
  echo "figures the tests measured:"
  cat "$figures"
fi
