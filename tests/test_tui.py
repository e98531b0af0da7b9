"""The terminal client, driven by textual's Pilot with a fake (file) audio device."""

import asyncio

import numpy as np
import pytest

pytest.importorskip("textual")

from agent import Agent, AgentConfig  # noqa: E402
from agent.bundle import load_bundle  # noqa: E402
from agent.registry import resolve  # noqa: E402
from frontends.tui.app import ChatApp  # noqa: E402
from frontends.tui.audio_io import FileIO, _OutputRing  # noqa: E402


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


def _scene_video(path, seconds: float = 4.0, fps: int = 10):
    """Three red circles, laid out afresh every frame (so the camera's view keeps changing)."""
    import av

    from agent.training.scenes import render

    with av.open(str(path), "w") as out:
        stream = out.add_stream("mjpeg", rate=fps)
        stream.width = stream.height = 128
        stream.pix_fmt = "yuvj420p"
        for i in range(int(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(render("circle", "red", 3, size=128, seed=i), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


@pytest.mark.skipif(__import__("shutil").which("flite") is None, reason="flite not installed")
def test_chat_with_a_video_file_as_live_camera(tmp_path):
    """`duplex chat --camera FILE`: the looped video reaches the session at the configured sampling rate, the
    preview shows it, and the model answers "what do you see" about it."""
    from frontends.tui.camera import CameraSource
    from tests.media import spoken

    bundle = load_bundle(resolve("default"), device="cpu")
    camera = CameraSource(str(_scene_video(tmp_path / "camera.avi")))
    audio = FileIO(spoken("what do you see", lead_s=1.5, tail_s=5.0), tail=0.5)
    config = AgentConfig(max_sessions=1, vision_fps=2.0)

    async def main():
        app = ChatApp(lambda: Agent(bundle, config), audio, seed=0, camera=camera)
        async with app.run_test(size=(110, 40)) as pilot:
            t0 = asyncio.get_running_loop().time()
            for _ in range(150):
                await pilot.pause(0.1)
                if "circles" in _transcript(app) or audio.finished.is_set():
                    break
            elapsed = asyncio.get_running_loop().time() - t0
            widget = app.query_one("#preview")
            # half blocks off a terminal; textual-image's widget (graphics protocol or its own half cells) on one
            preview = str(widget.render()) if not hasattr(widget, "image") else ("▀" if widget.image else "")
            vision = str(app.query_one("#vision").render())
            said = _transcript(app)
            await pilot.press("q")
        return app, elapsed, preview, vision, said

    app, elapsed, preview, vision, said = asyncio.run(main())
    assert "red" in said.split() and "circles" in said.split(), said
    assert camera.frames > 10 and app.camera_frames_sent > 10  # the live video was offered frame after frame
    assert 2 <= app.views_seen <= elapsed * config.vision_fps + 2  # ... and sampled at vision_fps
    assert "▀" in preview and "views the model took in" in vision


def _transcript(app) -> str:
    log = app.query_one("#transcript")
    return " ".join(line.text for line in log.lines) + " " + app.text


def test_camera_errors_are_clear(tmp_path):
    from frontends.tui.camera import CameraError, CameraSource

    with pytest.raises(CameraError, match="video file not found"):
        CameraSource(str(tmp_path / "missing.mp4"))
    with pytest.raises(CameraError, match="camera image not found"):
        CameraSource(str(tmp_path / "missing.png"))
    (tmp_path / "junk.mp4").write_bytes(b"not a video")
    with pytest.raises(CameraError, match="cannot open the video file"):
        CameraSource(str(tmp_path / "junk.mp4"))
    with pytest.raises(CameraError, match="cannot open the camera device"):
        CameraSource("/dev/video97")
