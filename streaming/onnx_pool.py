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

from streaming.slots import FrameResult, floor_noise

_TORCH = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "int64": torch.int64,
          "int32": torch.int32, "bool": torch.bool, "int16": torch.int16, "uint8": torch.uint8}
_NUMPY = {torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16, torch.int64: np.int64,
          torch.int32: np.int32, torch.bool: np.bool_, torch.int16: np.int16, torch.uint8: np.uint8}


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
                 threads: int | None = None, providers: list[str] | None = None, io_binding: bool | None = None):
        """`io_binding`: bind the state tensors in place (by pointer) instead of feeding arrays and copying the
        results back; the default on CUDA (ONNX Runtime's CUDA provider with a CUDA build of PyTorch), where it
        keeps the state on the GPU between frames."""
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
        on_gpu = "CUDAExecutionProvider" in providers and torch.cuda.is_available()
        self.device = torch.device("cuda", 0) if on_gpu else torch.device("cpu")
        self.io_binding = on_gpu if io_binding is None else io_binding
        # The states, one tensor of `capacity` rows each (torch tensors: row moves and resets on the device
        # alike); with I/O binding a second buffer per written tensor receives the step's result, then the two swap.
        self.states = {name: [torch.zeros((capacity, *shape), dtype=_TORCH[dt], device=self.device)
                              for shape, dt in zip(s["shapes"], s["dtypes"])]
                       for name, s in self.manifest["states"].items()}
        self._initial = {name: [torch.as_tensor(v, dtype=t.dtype, device=self.device)
                                for v, t in zip(s["initial"], self.states[name])]
                         for name, s in self.manifest["states"].items()}
        for name, tensors in self.states.items():
            for t, init in zip(tensors, self._initial[name]):
                t[...] = init
        self._next: dict[str, dict[int, torch.Tensor]] = {name: {} for name in self.states}
        if self.io_binding:
            for spec in self.manifest["graphs"].values():
                for i in spec["writes"]:
                    state = self.states[spec["state"]][i]
                    self._next[spec["state"]].setdefault(i, torch.empty_like(state))
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
        for name, tensors in self.states.items():
            for t, init in zip(tensors, self._initial[name]):
                t[row] = init
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
        for tensors in self.states.values():
            for t in tensors:
                t[row] = t[last]
        return last

    def _floor_noise(self, n: int, samples: int) -> np.ndarray:
        lm = self.states["lm"]
        return floor_noise(self._noise, lm[self._seeds_index][:n].tolist(), lm[self._offsets_index][:n].tolist(),
                           samples).numpy()

    def _run(self, graph: str, inputs: list[np.ndarray], n: int) -> list[np.ndarray]:
        g = self.graphs[graph]
        if self.io_binding:
            return self._run_bound(g, inputs, n)
        spec = g.spec
        tensors = self.states[spec["state"]]
        feeds = dict(zip(spec["inputs"], inputs))
        feeds.update({f"{spec['state']}_{i}": t[:n].numpy() for i, t in enumerate(tensors)})
        out = g.run(feeds)
        k = len(spec["outputs"])
        for i, value in zip(spec["writes"], out[k:]):
            tensors[i][:n].copy_(torch.from_numpy(value))
        return out[:k]

    def _run_bound(self, g: _Graph, inputs: list[np.ndarray], n: int) -> list[np.ndarray]:
        """The step with every state tensor bound by pointer: rows [0, n) of a row-major tensor are its first n
        rows in memory, so the active block is bound as is and nothing is copied on the way in or out."""
        spec = g.spec
        state = spec["state"]
        tensors, nexts = self.states[state], self._next[state]
        dev = self.device
        io = g.session.io_binding()
        for name, value in zip(spec["inputs"], inputs):
            io.bind_cpu_input(name, np.ascontiguousarray(value))
        for i, t in enumerate(tensors):
            name = f"{state}_{i}"
            if name in g.input_names:
                io.bind_input(name, dev.type, dev.index or 0, _NUMPY[t.dtype], (n, *t.shape[1:]), t.data_ptr())
        for name in spec["outputs"]:
            io.bind_output(name, "cpu")  # the frame's small results go to the host anyway
        for i in spec["writes"]:
            t = nexts[i]
            io.bind_output(f"{state}_{i}_next", dev.type, dev.index or 0, _NUMPY[t.dtype], (n, *t.shape[1:]),
                           t.data_ptr())
        g.session.run_with_iobinding(io)
        outs = io.get_outputs()
        for i in spec["writes"]:  # the written rows are in the second buffer: it becomes the state
            tensors[i], nexts[i] = nexts[i], tensors[i]
        return [outs[j].numpy() for j in range(len(spec["outputs"]))]

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
        lm[vision["keys"]][row] = torch.as_tensor(keys, device=self.device)
        lm[vision["values"]][row] = torch.as_tensor(values, device=self.device)
        lm[vision["present"]][row] = True
