"""Neural models: the Mimi-compatible codec, the dual-stream LM, vision adapters and fast kernels.

`models` knows nothing about transports; every streaming module exposes an explicit state object
(`init_state(batch)`), steps it in place, and resets rows of it per batch slot.
"""
