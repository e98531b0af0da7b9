"""Dialogues -> LM training examples: codec codes of both tracks, the aligned text stream, the scene image."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from agent.training.scenes import render
from models.codec import FRAME_SIZE as FRAME

PAD, EPAD = 3, 0


@dataclass
class Example:
    user: torch.Tensor  # [K, T] int16 codes
    agent: torch.Tensor  # [K, T]
    text: torch.Tensor  # [T] text stream (PAD / EPAD / word pieces)
    image: torch.Tensor | None  # [3, S, S] uint8 scene, or None
    meta: dict
    alt_users: torch.Tensor | None = None  # [N, K, T] the user track said by N drawn speakers (`speaker_warp`)


def text_stream(words: list[tuple[int, str]], frames: int, tokenizer) -> np.ndarray:
    """Each word's pieces start at the frame its audio starts (pushed later if the frame is taken); the frame
    before a word carries EPAD, everything else PAD (Moshi's inner-monologue layout)."""
    out = np.full(frames, PAD, np.int64)
    nxt = 0
    for start, word in words:
        pieces = tokenizer.encode(" " + word if nxt else word)
        f = max(start // FRAME, nxt)
        if f - 1 >= 0 and out[f - 1] == PAD:
            out[f - 1] = EPAD
        for p in pieces:
            if f >= frames:
                break
            out[f] = p
            f += 1
        nxt = f
    return out


@torch.no_grad()
def encode_dialogues(dialogues: list[dict], codec, tokenizer, image_size: int, batch: int = 16,
                     speaker_warps: int = 0, seed: int = 0) -> list[Example]:
    """`speaker_warps` > 0 also encodes each user track as said by that many speakers drawn in the codec's
    feature space (seeded per dialogue by `seed` and its index)."""
    import random

    from agent.training.speaker_warp import SpeakerWarp, encode_warped

    codec.eval()
    examples = []
    for i in tqdm(range(0, len(dialogues), batch), desc="encode dialogues", unit="batch"):
        chunk = dialogues[i:i + batch]
        frames = [(d["user"].size + FRAME - 1) // FRAME for d in chunk]
        T = max(frames)
        wav = torch.zeros(2 * len(chunk), T * FRAME)
        for j, d in enumerate(chunk):
            wav[2 * j, :d["user"].size] = torch.from_numpy(d["user"].astype(np.float32) / 32767)
            wav[2 * j + 1, :d["agent"].size] = torch.from_numpy(d["agent"].astype(np.float32) / 32767)
        alts = None
        if speaker_warps:  # the user tracks' analysis is shared by their recorded and drawn speakers
            rngs = [random.Random(seed * 1_000_003 + i + j) for j in range(len(chunk))]
            draws = [[SpeakerWarp.draw(r) for _ in range(speaker_warps)] for r in rngs]
            user, *variants = encode_warped(codec, wav[0::2].to(codec.device), draws)
            codes = torch.empty(2 * len(chunk), *user.shape[1:], dtype=torch.int16)
            codes[0::2] = user.cpu().to(torch.int16)
            codes[1::2] = codec.encode(wav[1::2, None].to(codec.device)).cpu().to(torch.int16)
            alts = torch.stack(variants, 1).cpu().to(torch.int16)  # [B, N, K, T]
        else:
            codes = codec.encode(wav.to(codec.device)).cpu().to(torch.int16)  # [2B, K, T]
        for j, d in enumerate(chunk):
            t = frames[j]
            qa = d.get("qa") or {}
            scene = qa.get("scene")
            image = None
            if scene:
                image = torch.from_numpy(render(scene["shape"], scene["colour"], scene["count"], size=image_size,
                                                seed=i + j)).permute(2, 0, 1).contiguous()
            examples.append(Example(user=codes[2 * j, :, :t], agent=codes[2 * j + 1, :, :t],
                                    text=torch.from_numpy(text_stream(d["words"], t, tokenizer)), image=image,
                                    meta={"kind": d["kind"], "voice": d["voice"], "qa": qa,
                                          "user_end": d["user_end"], "frames": t, "crop": d.get("crop", False)},
                                    alt_users=None if alts is None else alts[j, :, :, :t].clone()))
    return examples


def encoder_fingerprint(codec) -> str:
    """Hash of the weights that decide the codes (all but the decoder half): a decoder-only fine-tune of the codec
    keeps it, so cached examples stay valid."""
    import hashlib

    from agent.training.codec_train import DECODER_HALF

    h = hashlib.sha1()
    for name, t in sorted(codec.state_dict().items()):
        if not name.startswith(DECODER_HALF):
            h.update(name.encode())
            h.update(t.detach().cpu().float().numpy().tobytes())
    return h.hexdigest()


def load_or_encode(data: Path | list[Path], cache: Path, codec, tokenizer, image_size: int,
                   speaker_warps: int = 0) -> list[Example]:
    """Encoded examples are cached next to the run, keyed by the data folders, the codec's encoder half and the
    number of drawn speakers per dialogue."""
    from agent.training.synth import load_dialogues

    folders = [data] if isinstance(data, Path) else list(data)
    key = f"{encoder_fingerprint(codec)}:{','.join(str(f.resolve()) for f in folders)}"
    key += f":warps={speaker_warps}" if speaker_warps else ""
    if cache.is_file():
        blob = torch.load(cache, weights_only=False)
        if blob.get("key") == key:
            return blob["examples"]
    examples = []
    for n, folder in enumerate(folders):  # one folder's audio in memory at a time
        examples += encode_dialogues(load_dialogues(folder), codec, tokenizer, image_size,
                                     speaker_warps=speaker_warps, seed=n)
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"key": key, "examples": examples}, cache)
    return examples
