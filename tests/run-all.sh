#!/usr/bin/env bash
# The whole test suite: builds what it needs from zero (base images, binary, images), runs the
# unit tests and every end-to-end test against real Docker, PostgreSQL and pgpool on the default
# node image (PostgreSQL 17), then the version matrix: the foundation, failover (kill), rewind
# and rebuild tests on PostgreSQL 15 and 18 and on the official-like images (17, 18), and the foundation
# and a failover under Compose v2. (tests/adopt.rs runs the official-like 17 and 18 images in
# the full suite.)
# Usage: tests/run-all.sh [extra cargo test args, e.g. a test name filter]
#   With arguments only the default run happens, filtered; the matrix needs none.
#   MATRIX=0 skips the matrix, MATRIX=only runs only the matrix.
set -euo pipefail
cd "$(dirname "$0")/.."

started=$SECONDS
stage() { echo "==== $1 ($((SECONDS - started)) s since start)"; }
# Each e2e cluster leaves its logs here; the summary at the end (also after a failure) prints
# the failover and recovery seconds the sidecar measured in each of this run's clusters.
rm -rf target/e2e-logs
trap 'stage "summary"; ./tests/summary.sh || true' EXIT

stage "images"
./docker/build-images.sh --matrix
./docker/compose-v2.sh >/dev/null

# One test at a time: every end-to-end test runs its own cluster, and failover timings on a
# 2-core machine are only meaningful without a second cluster competing for the CPUs.
run() { cargo test --release --locked "$@" -- --test-threads=1; }

matrix=${MATRIX:-1}
[ $# -gt 0 ] && matrix=0

if [ "$matrix" != only ]; then
  stage "full suite on PostgreSQL 17, Compose v1"
  run "$@"
fi

if [ "$matrix" != 0 ]; then
  version_tests=(--test foundation --test failover --test recovery --
    cluster_comes_up_replicates_exports_metrics_and_stops_cleanly
    killed_primary_is_fenced_and_best_standby_takes_over
    failed_primary_is_rewound_into_a_standby_and_loses_only_its_unreplicated_tail
    impossible_rewind_falls_back_to_rebuild_on_request)
  for nodes in 15 18 official official18; do
    stage "matrix: nodes $nodes"
    PGPOOL_SIDECAR_TEST_NODES=$nodes cargo test --release --locked "${version_tests[@]}" --test-threads=1
  done
  stage "matrix: Compose v2"
  PGPOOL_SIDECAR_TEST_COMPOSE=v2 cargo test --release --locked --test foundation --test failover -- \
    cluster_comes_up_replicates_exports_metrics_and_stops_cleanly \
    killed_primary_is_fenced_and_best_standby_takes_over --test-threads=1
fi
stage "done"
