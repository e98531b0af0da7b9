"""Helpers shared by every explicit streaming state.

A state is a dataclass of tensors whose first dimension is the batch slot. States are stepped in place
(static shapes, so CUDA graphs can capture them) and reset row by row when a session leaves or joins.
"""

from __future__ import annotations

import dataclasses

import torch


def reset_rows(tensor: torch.Tensor, mask: torch.Tensor, value: float | int = 0) -> None:
    """Set `tensor[b] = value` for every slot `b` where `mask[b]` is True, without a host sync."""
    view = mask.view(-1, *([1] * (tensor.dim() - 1))).to(tensor.device)
    if tensor.dtype == torch.bool:  # logic instead of `where` (ONNX Runtime has no boolean Where)
        tensor.copy_(view | tensor if value else ~view & tensor)
        return
    tensor.copy_(torch.where(view, torch.full_like(tensor, value), tensor))


class StreamState:
    """Base class: `reset(mask)` resets every tensor field (recursing into nested states) for masked slots.

    Fields whose name starts with `first` are reset to True; `positions` to -1; others to zero.
    """

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor held by this state, nested states included."""
        return _collect(self)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def reset(self, mask: torch.Tensor | None = None) -> None:
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, field.name)
            _reset_value(field.name, value, mask)


def _collect(value: object) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, StreamState):
        return [t for f in dataclasses.fields(value) for t in _collect(getattr(value, f.name))]  # type: ignore[arg-type]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _collect(item)]
    return []


def _reset_value(name: str, value: object, mask: torch.Tensor | None) -> None:
    if isinstance(value, StreamState):
        value.reset(mask)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _reset_value(name, item, mask)
    elif isinstance(value, torch.Tensor):
        fill: float | int = 0
        if name.startswith("first"):
            fill = True
        elif name.startswith("positions"):
            fill = -1
        if mask is None:
            value.fill_(fill)
        else:
            reset_rows(value, mask, fill)


def narrow_state(state: StreamState, rows: int):
    """A view of `state` over slots [0, rows): stepping the view updates those rows of `state` in place."""
    return _map_tensors(state, lambda t: t[:rows])


def copy_slot(state: StreamState, src: int, dst: int) -> None:
    """Move one session's state from slot `src` to slot `dst` (compacting the pool when a session leaves)."""
    for t in state.tensors():
        t[dst].copy_(t[src])


def _map_tensors(value: object, fn):
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, StreamState):
        changes = {f.name: _map_tensors(getattr(value, f.name), fn) for f in dataclasses.fields(value)}  # type: ignore[arg-type]
        return dataclasses.replace(value, **changes)  # type: ignore[type-var]
    if isinstance(value, list):
        return [_map_tensors(v, fn) for v in value]
    if isinstance(value, tuple):
        return tuple(_map_tensors(v, fn) for v in value)
    return value


def with_tensors(state: StreamState, tensors: list[torch.Tensor]):
    """A state of the same structure as `state` holding `tensors` (in `state.tensors()` order)."""
    it = iter(tensors)
    out = _map_tensors(state, lambda _: next(it))
    if next(it, None) is not None:
        raise ValueError("more tensors than the state holds")
    return out


def tensor_names(value: object, prefix: str = "") -> list[str]:
    """Dotted names of a state's tensors, in `tensors()` order (e.g. `backbone.layers.0.keys`)."""
    if isinstance(value, torch.Tensor):
        return [prefix]
    if isinstance(value, StreamState):
        return [n for f in dataclasses.fields(value)  # type: ignore[arg-type]
                for n in tensor_names(getattr(value, f.name), f"{prefix}.{f.name}" if prefix else f.name)]
    if isinstance(value, (list, tuple)):
        return [n for i, item in enumerate(value) for n in tensor_names(item, f"{prefix}.{i}")]
    return []
