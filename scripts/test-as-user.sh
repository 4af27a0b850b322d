#!/usr/bin/env bash
# The end-to-end suite again as a normal user, as most people run roost: no
# root and no sudo at run time. Run as root (CI is); it switches to the test
# user that `scripts/setup.sh --dev` creates, in a copy of this tree that the
# user owns, with a virtualenv on the system's python3.
#   bash scripts/test-as-user.sh [pytest arguments]   # default: tests/e2e
set -euo pipefail
cd "$(dirname "$0")/.."
user=${ROOST_TEST_USER:-roosttest}
if [ "$(id -u)" -ne 0 ]; then
  echo "test-as-user: run as root: it runs the suite as $user" >&2
  exit 2
fi
if ! id "$user" >/dev/null 2>&1; then
  echo "test-as-user: no user $user; run \`bash scripts/setup.sh --dev\` first" >&2
  exit 2
fi
home=$(getent passwd "$user" | cut -d: -f6)
dest="$home/roost-ci"
rm -rf "$dest"
mkdir -p "$dest"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  git ls-files -z --cached --others --exclude-standard | tar -c --null -T - -f - | tar -x -C "$dest"
else
  tar -c --exclude=.venv -f - . | tar -x -C "$dest"
fi
chown -R "$user:" "$dest"
args=("$@")
[ "${#args[@]}" -gt 0 ] || args=(tests/e2e)
quoted=$(printf '%q ' "${args[@]}")
# A login shell: the user's own HOME, PATH and nothing of root's environment.
su - "$user" -s /bin/bash -c "set -euo pipefail; cd $(printf %q "$dest")
  /usr/bin/python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -e '.[dev]'
  export ROOST_REQUIRE_E2E=1
  set +e
  .venv/bin/python -m pytest -ra -p no:cacheprovider $quoted
  rc=\$?
  [ \"\$rc\" -ne 5 ] || { echo 'test-as-user: pytest collected no tests; that is a failure' >&2; exit 1; }
  exit \"\$rc\""
