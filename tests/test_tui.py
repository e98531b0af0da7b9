"""The terminal client, driven by textual's Pilot with a fake (file) audio device."""

import asyncio

import numpy as np
import pytest

pytest.importorskip("textual")

from agent import Agent, AgentConfig  # noqa: E402
from agent.bundle import load_bundle  # noqa: E402
from agent.registry import resolve  # noqa: E402
from tui.app import ChatApp  # noqa: E402
from tui.audio_io import FileIO, _OutputRing  # noqa: E402


def test_chat_app_transcript_meters_mute_and_quit(tmp_path):
    bundle = load_bundle(resolve("default"), device="cpu")
    t = np.arange(24000 * 2) / 24000
    audio = FileIO((0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32), tmp_path / "out.wav", tail=0.5)

    async def main():
        app = ChatApp(lambda: Agent(bundle, AgentConfig(max_sessions=1)), audio, seed=1)
        async with app.run_test(size=(100, 30)) as pilot:
            for _ in range(60):
                await pilot.pause(0.1)
                if app.last_stats is not None and app.last_stats.frame > 20:
                    break
            assert app.last_stats is not None  # stats line is live
            assert "latency" in str(app.query_one("#stats").render())
            assert audio.recorded  # the model's audio went to the output device
            await pilot.press("m")
            assert app.muted
            await pilot.press("i")  # no camera configured: a warning, no crash
            await pilot.press("q")
        return app

    app = asyncio.run(main())
    assert app.agent.engine.sessions == 0
    assert (tmp_path / "out.wav").is_file()


def test_output_ring_is_bounded_and_fills_silence():
    ring = _OutputRing(max_s=0.1)
    ring.push(np.ones(24000, np.float32))
    out, full = ring.pull(4800)  # only the newest 100 ms were kept, then silence
    assert not full and ring.dropped == 24000 - 2400
    assert np.all(out[:2400] == 1) and np.all(out[2400:] == 0)
