#!/usr/bin/env bash
# Sets everything up and runs the whole suite: lint, types, unit and
# end-to-end tests (a real VM under QEMU; TCG where KVM does not work).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev

.venv/bin/ruff check roost roost_guest tests bench scripts
.venv/bin/mypy

# The end-to-end suite must run, not skip: its conftest fails when QEMU or
# the image cannot be had, and this makes a run with no e2e tests fail too.
export ROOST_REQUIRE_E2E=1
# The hostile guest's event flood: 15 s in the suite (the note's figure is a 60 s run).
export ROOST_FLOOD_SECS=${ROOST_FLOOD_SECS:-15}
set +e
.venv/bin/python -m pytest -ra "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "test: pytest collected no tests; that is a failure" >&2
  exit 1
fi
# RELIABILITY.md from what this full run recorded (tests/.results/), failures included.
[ "$#" -eq 0 ] && .venv/bin/python scripts/reliability.py
[ "$rc" -eq 0 ] || exit "$rc"

# Again as a normal user, as most people run roost (no root, no sudo): every
# end-to-end file on the built-in image; the guest user is then that user,
# and tests take guest root with sudo. Root-only: test_debian*.py need the
# debian-12 image, whose build as a normal user (mmdebstrap's unshare mode)
# is not covered; test_hostile_guest.py makes shares owned by other host
# users, which takes host root; test_load.py is the same code as root's run,
# kept to one pass for time; the two full-file-system faults mount a tmpfs,
# which takes root (deselected, not skipped: a skipped end-to-end test fails a run).
if [ "$(id -u)" -eq 0 ] && [ "$#" -eq 0 ]; then
  echo "test: end-to-end tests again as a normal user (scripts/test-as-user.sh)"
  bash scripts/test-as-user.sh tests/e2e/test_cli_errors.py tests/e2e/test_copy.py \
    tests/e2e/test_everyday.py tests/e2e/test_faults.py \
    tests/e2e/test_guest_services.py tests/e2e/test_host_dns.py tests/e2e/test_lifecycle.py \
    tests/e2e/test_lifecycle_policy.py tests/e2e/test_micro_tools.py \
    tests/e2e/test_mount_faults.py tests/e2e/test_mounts.py tests/e2e/test_network_policy.py \
    tests/e2e/test_portfwd.py tests/e2e/test_sandbox.py tests/e2e/test_sdk.py \
    tests/e2e/test_snapshots.py \
    tests/e2e/test_suspend.py tests/e2e/test_zz_faults.py \
    --deselect tests/e2e/test_faults.py::test_roost_home_on_a_full_file_system \
    --deselect tests/e2e/test_faults.py::test_guest_disk_fills_the_host_file_system
fi
