#!/usr/bin/env bash
# Set up personae in ./.venv. `--test` also installs what the test suite needs.
# Idempotent: a second run only checks. Used by the README's two commands and by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# Every package comes from the lock (locks/personae.txt, pip constraints): the versions CI tested, so a
# release that appears on the registry tomorrow cannot break today's install. scripts/lock.sh refreshes it.
LOCK=locks/personae.txt
if [ -n "${PERSONAE_TORCH:-}" ]; then  # another torch build (e.g. a CUDA one): everything else stays locked
  grep -v '^torch==' locks/personae.txt > .venv/lock-without-torch.txt
  LOCK=.venv/lock-without-torch.txt
fi
PIP=".venv/bin/pip --disable-pip-version-check"
# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build where a CPU one is wanted.
# On a GPU machine this same pin is PyTorch's default (CUDA) build.
$PIP install -q -c "$LOCK" "torch==${PERSONAE_TORCH:-2.13.0}"
extras=""
if [ "${1:-}" = "--test" ]; then
  extras="[test]"
fi
$PIP install -q -c "$LOCK" -e ".${extras}"
# ControlNet's face and pose maps use MediaPipe 0.10.21, the last release with its models inside the wheel.
# Its declared dependencies pull jax, a second OpenCV, numpy<2 and protobuf<5 (TensorBoard needs newer), so it
# goes in without them, after the few packages it really imports (that order keeps pip from printing a
# dependency-conflict report about the ones left out); it runs with protobuf 6.
if ! .venv/bin/python -c "from mediapipe.python.solutions import face_mesh, pose" >/dev/null 2>&1; then
  if ! { $PIP install -q -c "$LOCK" attrs absl-py flatbuffers matplotlib "protobuf>=6.31,<7" \
         && $PIP install -q -c "$LOCK" --no-deps "mediapipe==0.10.21"; }; then
    if [ -n "$extras" ]; then
      echo "error: could not install mediapipe==0.10.21 (the tests of ControlNet face and pose maps need it)." >&2
      exit 1
    fi
    echo "note: could not install mediapipe==0.10.21; ControlNet face and pose maps need it (canny works without)"
  fi
fi
# Storyboards draw dialogue in any script: make sure a font with Hangul and Cyrillic exists.
if [ -n "$extras" ] && ! .venv/bin/python -m pip show -q spandrel >/dev/null 2>&1; then
  # the upscaler tests' reference loader (A1111's and ComfyUI's); its declared torchvision would replace our torch
  $PIP install -q -c "$LOCK" --no-deps "spandrel==0.4.2"
fi
if [ -n "$extras" ] && ! .venv/bin/python -m pip show -q k-diffusion >/dev/null 2>&1; then
  # the samplers' reference (A1111 and ComfyUI sample with it); its declared torchvision would replace our torch
  $PIP install -q -c "$LOCK" --no-deps "k-diffusion==0.1.1.post1"
fi
if ! fc-list 2>/dev/null | grep -qiE "nanum|noto sans cjk|notosanscjk"; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    (apt-get install -y -qq fonts-nanum >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq fonts-nanum >/dev/null 2>&1; }) \
      || echo "note: could not install fonts-nanum; storyboards with Korean text need a CJK font (--font FILE)"
  else
    echo "note: storyboards with Korean or other CJK text need a CJK font: install fonts-nanum or fonts-noto-cjk, or pass --font"
  fi
fi
# The browser tests drive Debian's chromium with Playwright (never `playwright install`).
if [ "${1:-}" = "--test" ] && [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    (apt-get install -y -qq chromium >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1; }) \
      || echo "note: could not install chromium; the report browser test needs /usr/bin/chromium"
  else
    echo "note: the report browser test needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)"
  fi
fi
echo "personae is set up in .venv ($(.venv/bin/python -c 'import torch, diffusers; print("torch", torch.__version__, "diffusers", diffusers.__version__)'))"
