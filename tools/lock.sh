#!/usr/bin/env bash
# Resolve propbench with every extra for one interpreter and write constraints/py<X.Y>.txt,
# the versions `make install` then installs there.  torch stays at the version the committed
# results were produced with; the rest is the newest that fits, or BASE's pins where they do.
#   tools/lock.sh python3.12 [BASE_CONSTRAINTS]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$1
BASE=${2:-}
TORCH=2.13.0
version=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install --quiet --upgrade pip
args=(--dry-run --ignore-installed --quiet --report "$tmp/report.json" "torch==$TORCH" -e ".[test,optuna,parquet]")
if [ -n "$BASE" ]; then
  grep -v '^torch==' "$BASE" > "$tmp/base.txt"
  args+=(-c "$tmp/base.txt")
fi
# the public index alone, whatever this machine adds (local wheels, mirrors, caps)
env -u PIP_FIND_LINKS -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null "$tmp/venv/bin/python" -m pip install "${args[@]}"
"$tmp/venv/bin/python" - "$tmp/report.json" "$version" "$TORCH" > "constraints/py$version.txt" <<'PYEOF'
import json, sys
report, version, torch = sys.argv[1:]
pins = sorted(  # by name, as pip freeze does
    (item["metadata"]["name"], item["metadata"]["version"])
    for item in json.load(open(report))["install"]
    if item["metadata"]["name"].lower() != "propbench"
)
pins.sort(key=lambda pin: pin[0].lower())
print(f"# The versions `make install` installs on Python {version} (tools/lock.sh; torch {torch},")
print("# the version the committed results were produced with). A local build suffix (+cpu) is")
print("# never pinned: `torch==X` accepts whichever build of X the user's pip finds.")
for name, version_ in pins:
    print(f"{name}=={version_.split('+')[0]}")
PYEOF
echo "wrote constraints/py$version.txt ($(grep -vc '^#' "constraints/py$version.txt") pins)"
