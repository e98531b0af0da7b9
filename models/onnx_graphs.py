"""The per-frame step as ONNX graphs with explicit state: codec encode, LM frame, codec decode (and the vision
encoder and its K/V projection).

Each streaming state (ring KV caches, Mamba2 conv/SSM state, codec conv/transformer state, the token ring,
counters, seeds) is flattened into a list of tensors with the batch slot first; a graph takes every tensor of its
state as an input and returns the ones its step writes, so one graph serves every batch size (dynamic batch
axis) and the caller owns the state, exactly as `streaming.slots.SlotPool` owns the PyTorch states. The wrappers
below call the same `encode_step` / `LMGenerator.step` / `decode_step` the PyTorch path runs: the graphs are
exports of that code, not a second implementation, and the tests compare the two frame by frame.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from models.state import StreamState, tensor_names, with_tensors

OPSET = 20
FORMAT = 1
MANIFEST = "onnx.json"


@dataclass
class GraphSpec:
    """What the runtime needs to feed and read one graph."""

    file: str
    inputs: list[str]  # the non-state inputs, in order
    outputs: list[str]  # the non-state outputs, in order
    state: str  # which state the graph steps ("codec" or "lm"; "" for stateless graphs)
    writes: list[int] = field(default_factory=list)  # indices of the state tensors it returns, in order


@dataclass
class StateSpec:
    names: list[str]  # dotted field names (models.state.tensor_names)
    shapes: list[list[int]]  # per tensor, without the batch axis
    dtypes: list[str]
    initial: list  # a fresh slot's row of each tensor: a scalar when uniform, else nested lists


def fingerprint(*modules: nn.Module) -> str:
    """Hash of every weight and buffer: a graph folder belongs to exactly these weights."""
    h = hashlib.sha1()
    for m in modules:
        for name, t in sorted(m.state_dict().items()):
            h.update(name.encode())
            h.update(str(tuple(t.shape)).encode())
            h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                     if t.numel() else b"")
    return h.hexdigest()


def step_fingerprint(codec: nn.Module, lm: nn.Module, sampling) -> str:
    """What a frame step's graphs are traced from: the weights, the LM's config (its attention window sizes the
    caches) and the sampling settings baked into the graph."""
    h = hashlib.sha1(fingerprint(codec, lm).encode())
    h.update(repr(lm.cfg).encode())
    h.update(repr(sampling).encode())
    return h.hexdigest()


def code_fingerprint() -> str:
    """Hash of the model code the graphs are traced from (every module under models/): graphs exported by other
    code are re-exported rather than trusted."""
    h = hashlib.sha1()
    root = Path(__file__).resolve().parent
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _randomised(state: StreamState, seed: int = 0) -> list[torch.Tensor]:
    """The state's tensors filled with random values, to see which ones a step writes."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for t in state.tensors():
        if t.dtype == torch.bool:
            out.append(torch.randint(0, 2, t.shape, generator=g).bool())
        elif t.dtype.is_floating_point:
            out.append(torch.randn(t.shape, generator=g).to(t.dtype))
        else:
            out.append(torch.randint(0, 7, t.shape, generator=g).to(t.dtype))
    return out


def written_tensors(step, template: StreamState, args: tuple) -> list[int]:
    """Indices of the state tensors `step(*args, state)` changes, found by stepping a randomised copy."""
    before = _randomised(template)
    state = with_tensors(template, [t.clone() for t in before])
    with torch.no_grad():
        step(*args, state)
    return [i for i, (a, b) in enumerate(zip(before, state.tensors())) if not torch.equal(a, b)]


class _StateGraph(nn.Module):
    """forward(*inputs, state_list) -> (*outputs, *written state tensors): a step on a private copy of the state."""

    def __init__(self, template: StreamState, writes: list[int]):
        super().__init__()
        self.template, self.writes = template, writes

    def _state(self, tensors: list[torch.Tensor]) -> StreamState:
        return with_tensors(self.template, [t.clone() for t in tensors])

    def _written(self, state: StreamState) -> tuple[torch.Tensor, ...]:
        tensors = state.tensors()
        return tuple(tensors[i] for i in self.writes)


class EncodeGraph(_StateGraph):
    """wav [B, 1, frame] -> user codes [B, K]."""

    def __init__(self, codec, template, writes):
        super().__init__(template, writes)
        self.codec = codec

    @staticmethod
    def run(codec, wav, state):
        return codec.encode_step(wav, state)[..., 0]

    def forward(self, wav: torch.Tensor, state: list[torch.Tensor]):
        st = self._state(state)
        return (self.run(self.codec, wav, st), *self._written(st))


class DecodeGraph(_StateGraph):
    """audio codes [B, dep_q] (placeholders < 0 inside the model delay), valid [B] -> pcm [B, frame] (silence
    where not valid, and those rows' decoder restarted): what `SlotPool._device_step` does after the LM."""

    def __init__(self, codec, template, writes):
        super().__init__(template, writes)
        self.codec = codec

    @staticmethod
    def run(codec, audio, valid, state):
        pcm = codec.decode_step(audio.clamp_min(0)[..., None], state)[:, 0]
        codec.reset_decoder(state, ~valid)
        return torch.where(valid[:, None], pcm, torch.zeros_like(pcm)).float()

    def forward(self, audio: torch.Tensor, valid: torch.Tensor, state: list[torch.Tensor]):
        st = self._state(state)
        return (self.run(self.codec, audio, valid, st), *self._written(st))


class LMGraph(_StateGraph):
    """user codes [B, K] -> text [B], audio [B, dep_q], valid [B], text logits [B, V] (and the vision gate)."""

    def __init__(self, generator, template, writes):
        super().__init__(template, writes)
        self.generator = generator
        self.lm = generator.model  # registers the weights with the module

    @staticmethod
    def run(generator, codes, state):
        out = generator.step(codes, state)
        extra = (out.gate,) if out.gate is not None else ()
        return (out.text, out.audio, out.valid, out.text_logits, *extra)

    def forward(self, codes: torch.Tensor, state: list[torch.Tensor]):
        st = self._state(state)
        return (*self.run(self.generator, codes, st), *self._written(st))


class ImageGraph(nn.Module):
    """image [1, 3, S, S] in [0, 1] -> the keys and values one slot's cross-attention reads [1, H, N, Dh] x 2."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, image: torch.Tensor):
        return self.lm.transformer.shared_xa.project_kv(self.lm.encode_image(image))


def _export(module: nn.Module, args: tuple, path: Path, input_names: list[str], output_names: list[str],
            batch_axis: bool = True) -> None:
    batch = torch.export.Dim("batch", min=1, max=4096)
    dyn = []
    for a in args:
        if isinstance(a, list):
            dyn.append([{0: batch} for _ in a])
        else:
            dyn.append({0: batch} if batch_axis else None)
    import logging
    import warnings

    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # its notes (optional torchvision ops, axis names) are not the user's business
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(module.eval(), args, dynamo=True, dynamic_shapes=tuple(dyn),
                                        opset_version=OPSET, input_names=list(input_names),
                                        output_names=output_names, optimize=True, verbose=False)
    finally:
        quiet.setLevel(level)
    program.save(str(path))


def export_graphs(codec, generator, out: Path, quantize: str | None = None, log=print) -> dict:
    """Write the graphs of one model (its codec and its `LMGenerator`, whose sampling settings are baked in)
    into `out`, with `onnx.json` describing their inputs, outputs and states; returns that manifest."""
    out.mkdir(parents=True, exist_ok=True)
    lm = generator.model.eval()
    codec = codec.eval()
    B = 2
    codec_tpl = codec.init_state(B, chunk=1)
    lm_tpl = generator.init_state(B)
    K = lm.cfg.user_streams
    wav = torch.randn(B, 1, codec.frame_size) * 0.1
    codes = torch.randint(0, codec.bins, (B, K))
    audio = torch.randint(0, codec.bins, (B, lm.cfg.dep_q))
    valid = torch.tensor([True, False])

    specs: dict[str, GraphSpec] = {}
    enc_w = written_tensors(lambda w, s: EncodeGraph.run(codec, w, s), codec_tpl, (wav,))
    dec_w = written_tensors(lambda a, v, s: DecodeGraph.run(codec, a, v, s), codec_tpl, (audio, valid))
    lm_w = written_tensors(lambda c, s: LMGraph.run(generator, c, s), lm_tpl, (codes,))
    n_codec, n_lm = len(codec_tpl.tensors()), len(lm_tpl.tensors())
    lm_outputs = ["text", "audio", "valid", "text_logits"] + (["gate"] if lm_tpl.backbone.vision is not None else [])
    jobs = [
        ("encode", EncodeGraph(codec, codec_tpl, enc_w), (wav, list(codec_tpl.tensors())), ["wav"], ["codes"],
         "codec", enc_w, n_codec),
        ("lm", LMGraph(generator, lm_tpl, lm_w), (codes, list(lm_tpl.tensors())), ["codes"], lm_outputs, "lm", lm_w,
         n_lm),
        ("decode", DecodeGraph(codec, codec_tpl, dec_w), (audio, valid, list(codec_tpl.tensors())),
         ["audio", "valid"], ["pcm"], "codec", dec_w, n_codec),
    ]
    for name, module, args, ins, outs, state, writes, n_state in jobs:
        log(f"exporting the {name} step ({len(writes)} of {n_state} state tensors written per step)")
        state_in = [f"{state}_{i}" for i in range(n_state)]
        state_out = [f"{state}_{i}_next" for i in writes]
        _export(module, args, out / f"{name}.onnx", ins + state_in, outs + state_out)
        specs[name] = GraphSpec(f"{name}.onnx", ins, outs, state, writes)
    if lm.image_encoder is not None:
        log("exporting the image encoder and its K/V projection")
        size = lm.image_encoder.cfg.image_size
        image = torch.rand(1, 3, size, size)
        _export(ImageGraph(lm), (image,), out / "image.onnx", ["image"], ["keys", "values"], batch_axis=False)
        specs["image"] = GraphSpec("image.onnx", ["image"], ["keys", "values"], "")
    if quantize:
        _quantize(out, specs, quantize, log)

    def state_spec(tpl: StreamState) -> StateSpec:
        tpl.reset()  # the values a joining slot gets (StreamState's reset rules)
        ts = tpl.tensors()
        initial = []
        for t in ts:
            row = t[0]
            uniform = row.numel() == 0 or bool((row == row.reshape(-1)[0]).all())
            value = row.reshape(-1)[0].item() if uniform and row.numel() else row.tolist() if row.numel() else 0
            initial.append(value)
        return StateSpec(tensor_names(tpl), [list(t.shape[1:]) for t in ts],
                         [str(t.dtype).removeprefix("torch.") for t in ts], initial)

    manifest = {
        "format": FORMAT, "opset": OPSET, "quantize": quantize or "",
        "fingerprint": step_fingerprint(codec, lm, generator.sampling), "code": code_fingerprint(),
        "sampling": dataclasses.asdict(generator.sampling),
        "frame_size": codec.frame_size, "user_streams": K, "dep_q": lm.cfg.dep_q,
        "graphs": {k: dataclasses.asdict(v) for k, v in specs.items()},
        "states": {"codec": dataclasses.asdict(state_spec(codec_tpl)), "lm": dataclasses.asdict(state_spec(lm_tpl))},
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def _quantize(out: Path, specs: dict[str, GraphSpec], mode: str, log) -> None:
    """int8 dynamic quantisation of the matrix multiplications (weights int8, activations quantised per call)."""
    if mode != "int8":
        raise ValueError(f"unknown quantisation {mode!r} (int8 is the one supported)")
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))  # its pre-processing advice
    for name in ("lm", "image"):
        if name not in specs:
            continue
        path = out / specs[name].file
        log(f"quantising the {name} graph's matrix multiplications to int8")
        tmp = path.with_suffix(".int8.onnx")
        quantize_dynamic(str(path), str(tmp), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
        tmp.replace(path)
        for extra in out.glob(f"{path.name}.data"):
            extra.unlink()
