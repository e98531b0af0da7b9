"""Real human speech that Debian packages ship, for test sets only (never training, never checkpoint choice).

A few real speakers' recordings exist offline here, so they are kept out of everything but testing:

- **out of domain**: Debian's pocketsphinx-testdata (LibriVox readings, spoken card names, robot commands),
  alsa-utils' speaker-test voice ("front left", "rear center") and its pink noise, and the Asterisk PBX prompts
  of `asterisk-core-sounds-en-wav` (Allison Smith, CC-BY-SA-3.0: "all circuits are busy now", "please hold
  while I try that number"). None is a question the model can answer: each must get the refusal or silence.
- **in domain, a real voice**: the Asterisk prompts include isolated words a question can be built from - the
  digits, "plus", "minus", "hello", "goodbye" - so "two plus three" said by a real person (spliced from her
  recorded words, with short pauses) is a question of its own domain in a kind of voice no training voice is.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from models.codec import SAMPLE_RATE as RATE

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
POCKETSPHINX = Path("/usr/share/pocketsphinx/test/data")
_SOUNDS = Path("/usr/share/asterisk/sounds")
# asterisk-core-sounds-en-wav installs en_US_f_Allison; the `en` link comes with asterisk-core-sounds-en, which
# only some installs pull in
ASTERISK = next((p for p in (_SOUNDS / "en", _SOUNDS / "en_US_f_Allison") if p.is_dir()), _SOUNDS / "en")
ALSA = Path("/usr/share/sounds/alsa")  # alsa-utils' speaker-test voice ("front left", ...) and its pink noise
# prompts that are tones, or that a greeting answer would rightly follow ("hello", "thank you", "goodbye")
_NOT_OUT_OF_DOMAIN = ("beep", "tone", "hello", "bye", "thank", "silence")


def _pad(x: np.ndarray, lead: float = 0.5, tail: float = 3.0) -> np.ndarray:
    return np.concatenate([np.zeros(int(lead * RATE), np.float32), x.astype(np.float32),
                           np.zeros(int(tail * RATE), np.float32)])


def _load(path: Path) -> np.ndarray:
    from agent.audio import load_audio

    if path.suffix == ".raw":  # pocketsphinx's raw files: 16 kHz, 16-bit little-endian, mono
        x = np.fromfile(path, "<i2").astype(np.float32) / 32768
        return np.interp(np.arange(0, x.size, 16_000 / RATE), np.arange(x.size), x).astype(np.float32)
    return load_audio(path).samples


def _trim(x: np.ndarray, floor: float = 0.01) -> np.ndarray:
    """An isolated word without the silence its recording has around it (20 ms kept each side)."""
    loud = np.flatnonzero(np.abs(x) > floor * max(float(np.abs(x).max()), 1e-6) * 10)
    if loud.size == 0:
        return x
    keep = int(0.02 * RATE)
    return x[max(0, loud[0] - keep): loud[-1] + keep]


def _dialogue(kind: str, name: str, x: np.ndarray, answer: str = "", key: list[str] | None = None,
              voice: str = "real") -> dict:
    user = _pad(x)
    turn = {"kind": kind, "question": name, "answer": answer, "key": key or [], "user_start": RATE // 2,
            "user_end": RATE // 2 + x.size, "scene": None}
    return {"user": (np.clip(user, -1, 1) * 32767).astype(np.int16), "qa": dict(turn), "turns": [turn],
            "user_end": turn["user_end"], "kind": kind, "voice": voice}


def out_of_domain_recordings(asterisk_limit: int = 100, max_seconds: float = 12.0) -> list[dict]:
    """Real recordings not meant for the model (kind "real"): refusal or silence is right."""
    files = sorted(LIBRIVOX.glob("*.wav")) + sorted((POCKETSPHINX / "cards").glob("*.wav"))
    files += sorted(POCKETSPHINX.glob("*.raw")) + sorted(ALSA.glob("*.wav"))
    prompts = [p for p in sorted(ASTERISK.glob("*.wav")) if not any(w in p.stem for w in _NOT_OUT_OF_DOMAIN)]
    if len(prompts) > asterisk_limit:  # an even spread over the alphabet (voicemail, conference, queue...)
        step = len(prompts) / asterisk_limit
        prompts = [prompts[int(i * step)] for i in range(asterisk_limit)]
    out = []
    for f in files + prompts:
        x = _load(f)[: int(max_seconds * RATE)]
        if x.size >= RATE // 4:
            folder = "en" if f.parent == ASTERISK else f.parent.name  # one name whichever way it was installed
            out.append(_dialogue("real", f"{folder}/{f.name}", x))
    return out


def _word(name: str) -> np.ndarray:
    for folder in ("digits", "letters", "."):
        p = ASTERISK / folder / f"{name}.wav"
        if p.exists():
            return _trim(_load(p))
    raise FileNotFoundError(f"no Asterisk recording of {name!r} (apt install asterisk-core-sounds-en-wav)")


def real_voice_questions(count: int = 60, seed: int = 5) -> list[dict]:
    """Sums, differences and greetings said by a real person: her recorded words spliced with 60-140 ms pauses."""
    from agent.training.dialogues import NUMBERS

    if not (ASTERISK / "digits" / "plus.wav").exists() and not (ASTERISK / "letters" / "plus.wav").exists():
        return []
    rng = random.Random(seed)
    out = [_dialogue("greet", "hello", _word("hello"), "hello there how can i help", ["hello"], "real:asterisk"),
           _dialogue("greet", "goodbye", _word("goodbye"), "good bye see you soon", ["good"], "real:asterisk")]
    while len(out) < count:
        kind = "add" if rng.random() < 0.55 else "sub"
        a = rng.randint(0, 9) if kind == "add" else rng.randint(1, 9)
        b = rng.randint(0, 9) if kind == "add" else rng.randint(0, a)
        op = "plus" if kind == "add" else "minus"
        pieces = []
        for w in (str(a), op, str(b)):
            pieces += [_word(w), np.zeros(int(rng.uniform(0.06, 0.14) * RATE), np.float32)]
        result = a + b if kind == "add" else a - b
        answer = f"{NUMBERS[a]} {op} {NUMBERS[b]} is {NUMBERS[result]}"
        out.append(_dialogue(kind, f"{NUMBERS[a]} {op} {NUMBERS[b]}", np.concatenate(pieces[:-1]), answer,
                             [NUMBERS[result]], "real:asterisk"))
    return out
