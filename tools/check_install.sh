#!/usr/bin/env bash
# Installs propbench as the README says, on each given interpreter, and reports how it went:
# a fresh clone of HEAD (committed work only), `make run` (a fresh .venv from
# constraints/py<X.Y>.txt, then the main job), then `make test`. One Markdown table row per
# interpreter, for the README's installation section; logs in $CHECK_DIR/<python>/.
#   tools/check_install.sh python3.10 python3.13
# Not part of CI: on Pythons other than this image's 3.11, torch comes from the index as a
# multi-GB CUDA build.
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
CHECK_DIR=${CHECK_DIR:-/tmp/propbench-check-install}
commit=$(git -C "$repo" rev-parse --short HEAD)
echo "| Python | torch | numpy | pandas | matplotlib | hydra-core | install + main job | tests | commit |"
echo "|---|---|---|---|---|---|---|---|---|"
for py in "$@"; do
  dir="$CHECK_DIR/$(basename "$py")"
  rm -rf "$dir" && mkdir -p "$dir"
  git clone --quiet "$repo" "$dir/propbench"
  cd "$dir/propbench"
  start=$(date +%s)
  make run PYTHON="$py" > "$dir/run.log" 2>&1 && run_ok=ok || run_ok=FAILED
  mid=$(date +%s)
  make test PYTHON="$py" > "$dir/test.log" 2>&1 && test_ok=ok || test_ok=FAILED
  end=$(date +%s)
  versions=$(.venv/bin/python -c '
import sys, importlib.metadata as m
names = ["torch", "numpy", "pandas", "matplotlib", "hydra-core"]
print(" | ".join(["%d.%d.%d" % sys.version_info[:3]] + [m.version(n) for n in names]))' 2>/dev/null \
    || echo "$py | - | - | - | - | -")
  # pytest's summary line (make may print its directory after it)
  tests=$(grep -E ' (passed|failed|error)' "$dir/test.log" | tail -n 1 | tr -d '=' | sed 's/^ *//; s/ *$//')
  echo "| $versions | $run_ok, $((mid - start)) s | $test_ok: $tests, $((end - mid)) s | $commit |"
  cd "$repo"
done
