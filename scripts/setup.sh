#!/usr/bin/env bash
# Create ./.venv (or $STEGO_VENV) and install the suite with the pinned, offline-installable set in constraints.txt.
# Re-running is cheap: nothing is reinstalled unless constraints.txt or pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${STEGO_VENV:-.venv}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
stamp="$venv/.stego-installed"
want=$(cat constraints.txt pyproject.toml | sha256sum)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "installing the suite into $venv (first time: a few minutes; pydensecrf2 compiles)"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -c constraints.txt \
    torch torchvision -e ".[dev]"
  echo "$want" > "$stamp"
fi
