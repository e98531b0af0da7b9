"""The slot pool stepped through ONNX Runtime sessions (`AgentConfig(backend="onnx")`, `--backend onnx`).

Same contract as `streaming.slots.SlotPool`: active sessions occupy rows [0, n) of preallocated states, a
leaving session's row is refilled by the last row, sampling is keyed by each slot's own seed and frame counter
(baked into the LM graph), so a session's tokens do not depend on who else is in the batch. The states are
NumPy arrays here (ONNX Runtime's CPU tensors); each frame feeds rows [0, n) to the encode, LM and decode graphs
and writes the state tensors each graph returns back into those rows.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from streaming.slots import FrameResult

_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": np.float32, "int64": np.int64,
           "int32": np.int32, "bool": np.bool_, "int16": np.int16, "uint8": np.uint8}


class OnnxBackendError(RuntimeError):
    """The ONNX backend cannot run this model; the message says what to do."""


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise OnnxBackendError("the ONNX backend needs ONNX Runtime: pip install 'duplex-agent[onnx]' "
                               "(onnxruntime-gpu for CUDA)") from exc
    return onnxruntime


class _Graph:
    def __init__(self, ort, folder: Path, spec: dict, options, providers: list[str]):
        self.spec = spec
        try:
            self.session = ort.InferenceSession(str(folder / spec["file"]), options, providers=providers)
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
            text = str(exc)
            if "opset" in text.lower():
                raise OnnxBackendError(f"{folder / spec['file']} needs an ONNX opset this ONNX Runtime "
                                       f"({ort.__version__}) lacks: upgrade onnxruntime, or export again with "
                                       f"this one installed ({text.splitlines()[0]})") from exc
            raise OnnxBackendError(f"cannot load {folder / spec['file']}: {text.splitlines()[0]}; "
                                   "export the model again (duplex export onnx)") from exc
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, {k: v for k, v in feeds.items() if k in self.input_names})


class OnnxSlotPool:
    def __init__(self, folder: Path, capacity: int, noise_floor: float = 0.0, fingerprint: str | None = None,
                 threads: int | None = None, providers: list[str] | None = None):
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        ort = import_onnxruntime()
        folder = Path(folder)
        try:
            self.manifest = json.loads((folder / "onnx.json").read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise OnnxBackendError(f"{folder} holds no exported graphs (onnx.json): run "
                                   f"`duplex export onnx MODEL --out {folder}`") from exc
        if fingerprint is not None and self.manifest.get("fingerprint") != fingerprint:
            raise OnnxBackendError(f"the graphs in {folder} were exported from other weights than this model's: "
                                   "export this model again (duplex export onnx MODEL --out FOLDER)")
        self.capacity, self.noise_floor = capacity, noise_floor
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only (its optimizer's notes are not the user's business)
        # One thread unless told otherwise: the step is thousands of small operators, which ONNX Runtime's
        # thread pool slows down rather than splits (measured on 2 cores at 1 and 16 sessions)
        options.intra_op_num_threads = threads or 1
        options.inter_op_num_threads = 1
        # Decaying recurrent state (Mamba2's SSM, the codec's filters) reaches denormal floats, which x86 cores
        # compute ~100x slower; PyTorch's CPU kernels flush them, so do the same here.
        options.add_session_config_entry("session.set_denormal_as_zero", "1")
        # The graphs run one after another: a session's idle workers must not spin while the next one computes.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        available = ort.get_available_providers()
        providers = providers or [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        self.providers = providers
        self.graphs = {name: _Graph(ort, folder, spec, options, providers)
                       for name, spec in self.manifest["graphs"].items()}
        self.states = {name: [np.zeros((capacity, *shape), _DTYPES[dt]) for shape, dt in zip(s["shapes"], s["dtypes"])]
                       for name, s in self.manifest["states"].items()}
        self._initial = {name: [np.asarray(v, dtype=a.dtype) for v, a in zip(s["initial"], self.states[name])]
                         for name, s in self.manifest["states"].items()}
        for name, arrs in self.states.items():
            for a, init in zip(arrs, self._initial[name]):
                a[...] = init
        self.active = 0
        self.keep_logits = False  # also return each frame's text logits (diagnostics, backend comparisons)
        self._noise = torch.Generator()
        names = self.manifest["states"]["lm"]["names"]
        self._seeds_index, self._offsets_index = names.index("seeds"), names.index("offsets")
        self._vision = ({k: names.index(f"backbone.vision.{k}") for k in ("keys", "values", "present")}
                        if "backbone.vision.keys" in names else None)

    @property
    def frame_size(self) -> int:
        return self.manifest["frame_size"]

    @property
    def has_vision(self) -> bool:
        return "image" in self.graphs

    def add(self, seed: int) -> int:
        if self.active >= self.capacity:
            raise RuntimeError("slot pool is full")
        row = self.active
        for name, arrs in self.states.items():
            for a, init in zip(arrs, self._initial[name]):
                a[row] = init
        self.states["lm"][self._seeds_index][row] = seed
        self.active += 1
        return row

    def remove(self, row: int) -> int | None:
        if not 0 <= row < self.active:
            raise IndexError(f"row {row} is not active")
        last = self.active - 1
        self.active -= 1
        if row == last:
            return None
        for arrs in self.states.values():
            for a in arrs:
                a[row] = a[last]
        return last

    def _floor_noise(self, n: int, samples: int) -> np.ndarray:
        seeds = self.states["lm"][self._seeds_index][:n].tolist()
        offsets = self.states["lm"][self._offsets_index][:n].tolist()
        return torch.stack([torch.randn(samples, generator=self._noise.manual_seed((s * 1_000_003 + t) % 2**62))
                            for s, t in zip(seeds, offsets)]).numpy()

    def _run(self, graph: str, inputs: list[np.ndarray], n: int) -> list[np.ndarray]:
        g = self.graphs[graph]
        spec = g.spec
        arrs = self.states[spec["state"]]
        feeds = dict(zip(spec["inputs"], inputs))
        feeds.update({f"{spec['state']}_{i}": a[:n] for i, a in enumerate(arrs)})
        out = g.run(feeds)
        k = len(spec["outputs"])
        for i, value in zip(spec["writes"], out[k:]):
            arrs[i][:n] = value
        return out[:k]

    def step(self, frames: np.ndarray) -> FrameResult:
        n = self.active
        if frames.shape != (n, self.frame_size):
            raise ValueError(f"expected frames of shape {(n, self.frame_size)}, got {frames.shape}")
        x = frames.astype(np.float32, copy=True)
        if self.noise_floor > 0:
            x += self.noise_floor * self._floor_noise(n, x.shape[-1])
        (codes,) = self._run("encode", [x[:, None]], n)
        lm_out = self._run("lm", [codes], n)
        text, audio, valid = lm_out[0], lm_out[1], lm_out[2]
        (pcm,) = self._run("decode", [audio, valid], n)
        gate = lm_out[4] if len(lm_out) > 4 else None
        return FrameResult(text=text, valid=valid, pcm=pcm, audio_codes=audio, user_codes=codes, gate=gate,
                           text_logits=lm_out[3] if self.keep_logits else None)

    def encode_image(self, image: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """[3, S, S] in [0, 1] -> (keys, values) for one slot; touches no session state."""
        if not self.has_vision:
            raise ValueError("this model has no image encoder")
        keys, values = self.graphs["image"].run({"image": image[None].float().numpy()})
        return keys[0], values[0]

    def set_image(self, row: int, tokens) -> None:
        vision = self._vision
        if vision is None:
            raise ValueError("this model has no vision adapter")
        lm = self.states["lm"]
        if tokens is None:
            lm[vision["present"]][row] = False
            return
        keys, values = tokens
        lm[vision["keys"]][row] = keys
        lm[vision["values"]][row] = values
        lm[vision["present"]][row] = True
