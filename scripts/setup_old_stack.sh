#!/usr/bin/env bash
# Build (once) the venv of an older stack: transformers 4.46 + diffusers 0.32 + peft 0.14, from
# locks/old-stack.txt. tests/test_old_stack.py renders personae's exports there. Usage: setup_old_stack.sh DIR
# A second run with the same lock only checks (the lock's hash is kept in DIR/lock.sha256).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-.venv-old}
PY=${PYTHON:-python3}
want=$(sha256sum locks/old-stack.txt | cut -d' ' -f1)
if [ -x "$DIR/bin/python" ] && [ "$(cat "$DIR/lock.sha256" 2>/dev/null)" = "$want" ]; then
  exit 0
fi
rm -rf "$DIR"
"$PY" -m venv "$DIR"
PIP="$DIR/bin/pip --disable-pip-version-check"
$PIP install -q -c locks/old-stack.txt torch==2.13.0
$PIP install -q -c locks/old-stack.txt -r <(grep -vE '^(#|torch==)' locks/old-stack.txt)
echo "$want" > "$DIR/lock.sha256"
