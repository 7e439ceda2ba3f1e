#!/usr/bin/env bash
# The whole test suite: builds what it needs from zero (base image, binary, images), then runs
# the unit tests and the end-to-end tests against real Docker, PostgreSQL and pgpool.
# Usage: tests/run-all.sh [extra cargo test args, e.g. a test name filter]
set -euo pipefail
cd "$(dirname "$0")/.."

./docker/base/ensure-base-image.sh
./docker/build-images.sh

# One test at a time: every end-to-end test runs its own cluster, and failover timings on a
# 2-core machine are only meaningful without a second cluster competing for the CPUs.
cargo test --release --locked "$@" -- --test-threads=1
