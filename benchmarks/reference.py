"""Optional access to kyutai's reference `moshi` package, used only as a baseline/oracle."""

from __future__ import annotations


def import_reference():
    """Return the `moshi.models.loaders` module, or None when the package is not installed."""
    try:
        from moshi.models import loaders  # type: ignore[import-not-found]
    except Exception:  # noqa: BLE001 - any import problem means "no baseline"
        return None
    return loaders


def reference_mimi(loaders, tiny: bool, num_codebooks: int = 8):
    """A random-weight reference Mimi (full or tiny) with randomised codebooks."""
    import torch

    cfg = None
    if tiny:
        cfg = {"sample_rate": 24000, "channels": 1, "frame_rate": 12.5,
               "seanet": dict(loaders._seanet_kwargs, dimension=32, n_filters=4),
               "quantizer": dict(loaders._quantizer_kwargs, dimension=16, n_q=8, bins=64, input_dimension=32,
                                 output_dimension=32),
               "transformer": dict(loaders._transformer_kwargs, d_model=32, num_heads=2, num_layers=2,
                                   dim_feedforward=64, input_dimension=32, output_dimensions=[32])}
        num_codebooks = min(num_codebooks, 8)
    mimi = loaders.get_mimi(None, mimi_config=cfg, device="cpu", num_codebooks=num_codebooks)
    with torch.no_grad():
        for name, buf in mimi.named_buffers():
            if name.endswith("embedding_sum"):
                buf.normal_()
            elif name.endswith("cluster_usage"):
                buf.uniform_(0.5, 2.0)
    return mimi.eval()
