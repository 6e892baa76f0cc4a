#!/usr/bin/env bash
# Fails, listing file:line, when a tracked file names an absolute path of one machine: a path
# under a home or work folder: the top-level folders work and root, or a user's folder under
# the top-level home or Users.
# Scripts and docs must work from any checkout: they default to repo-relative locations
# (models/, .venv/, target/, tests/fixtures/) and take environment variables for the rest.
#
#   .ci/check-paths.sh            # checks every tracked text file
#
# Allowed, on purpose:
# - container and example paths that belong to no machine: /models, /srv/models, /tmp/..., /app
#   (only the four roots above are looked for);
# - tests/fixtures/, whose generated data may record where it was made;
# - a line that says `check-paths: allow` (for a test that must name such a path, e.g. to assert
#   that an error message does not leak it); prefer not to need it.
# A path counts only where it starts a path: the same folder names inside a URL do not.
set -euo pipefail
cd "$(dirname "$0")/.."

# The roots, as an extended regex. A root must not follow a character that continues a word or
# a path (so URLs and relative paths such as `docs/work` pass).
roots='/(work|root)/|/(home|Users)/[A-Za-z0-9._-]+/'
pattern="(^|[^A-Za-z0-9_.~/-])($roots)"

# -I skips binary files. This script names the roots only as alternations, so it checks itself.
hits=$(git grep -n -I -E "$pattern" -- . ':(exclude)tests/fixtures' |
  grep -v 'check-paths: allow' || true)

if [ -n "$hits" ]; then
  echo "machine-specific absolute paths in tracked files (use a repo-relative default or an"
  echo "environment variable; see .ci/check-paths.sh):"
  echo "$hits" | cut -c1-200
  echo "$(echo "$hits" | wc -l) line(s)"
  exit 1
fi
echo "check-paths: no machine-specific paths in $(git ls-files | wc -l) tracked files"
