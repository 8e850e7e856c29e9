#!/usr/bin/env bash
# Refresh locks/personae.txt: resolve today's newest versions within pyproject.toml's ranges in a
# throwaway venv, install exactly what scripts/setup.sh --test installs, and write every package with
# its exact version. Then run the test suite on it before committing the new lock:
#   bash scripts/lock.sh && rm -rf .venv && bash scripts/setup.sh --test && .venv/bin/python -m pytest -q
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" -m venv "$tmp/venv"
PIP="$tmp/venv/bin/pip --disable-pip-version-check"
$PIP install -q "torch==${PERSONAE_TORCH:-2.13.0}"
$PIP install -q -e ".[test]"
# as scripts/setup.sh installs MediaPipe: its few real imports, then the wheel without its declared dependencies
$PIP install -q attrs absl-py flatbuffers matplotlib "protobuf>=6.31,<7"
$PIP install -q --no-deps "mediapipe==0.10.21"
$PIP install -q --no-deps "spandrel==0.4.2"  # the upscaler tests' reference, without its torchvision (setup.sh)
$PIP install -q --no-deps "k-diffusion==0.1.1.post1"  # the samplers' reference, without its torchvision (setup.sh)
{
  echo "# personae's locked install: exactly what CI tested. Written by scripts/lock.sh; used by scripts/setup.sh"
  echo "# as pip constraints (-c). torch is listed without its local label (+cpu / +cu12x) so one line fits both builds."
  $PIP freeze --all --exclude-editable | grep -vE '^(pip|personae)==' | sed -E 's/^(torch==[^+]+)\+.*/\1/'
} > locks/personae.txt
echo "wrote locks/personae.txt ($(grep -vc '^#' locks/personae.txt) packages); now run the test suite on it"
