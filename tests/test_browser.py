"""Headless Chromium with fake mic + camera loads the page, connects over WebRTC, and talks to the model."""

import asyncio
import shutil
import subprocess

import numpy as np
import pytest

pytest.importorskip("aiortc")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium not installed (scripts/setup.sh does it)")


async def page_reports(app, url: str, profile, *media: str, polls: int = 300) -> list[dict]:
    """Serve `app`, open `url` in headless Chromium with fake devices (`media`: extra --use-file-for-fake-*
    flags) and return the page's client reports once one arrives (or after `polls` x 0.1 s)."""
    from aiohttp.test_utils import TestServer

    from frontends.transports.keys import SERVER

    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
        "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream", *media,
        "--autoplay-policy=no-user-gesture-required", str(server.make_url("/")) + url,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(polls):
            await asyncio.sleep(0.1)
            if app[SERVER].client_reports:
                break
    finally:
        proc.kill()
        await proc.wait()
        await server.close()
    return list(app[SERVER].client_reports)


def test_browser_page_connects_and_exchanges_audio_video_text(tmp_path):
    from agent import Agent, AgentConfig
    from agent.audio import write_wav
    from frontends.server import build_app

    t = np.arange(48000 * 4) / 48000
    write_wav(tmp_path / "mic.wav", (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 48000)
    from tests.conftest import chatty_bundle

    bundle = chatty_bundle()

    async def main():
        app = build_app(Agent(bundle, AgentConfig(max_sessions=2)))
        return await page_reports(app, "?autoconnect=1&report=8", tmp_path / "profile",
                                  f"--use-file-for-fake-audio-capture={tmp_path / 'mic.wav'}")

    reports = asyncio.run(main())
    assert reports, "the page never reported back"
    r = reports[0]
    assert r["connected"] and r["audioTrack"], r  # WebRTC up, the model's audio track arrived
    assert r["textMessages"] > 0, r  # the model's text over the data channel
    stats = r["stats"]
    assert stats["audio_frames_in"] > 0 and stats["video_frames_in"] > 0, stats  # mic and camera reached us


@pytest.mark.skipif(shutil.which("flite") is None, reason="flite not installed (scripts/setup.sh installs it)")
def test_browser_camera_reaches_the_model(tmp_path):
    """The page's camera is what the model sees: asked "what do you see" (spoken, held-out voice) with Chromium's
    fake camera showing three red circles, the shipped model names their colour and shape in the page's transcript
    (how many it counts is the quality benchmark's business)."""
    from agent import Agent, AgentConfig
    from agent.audio import write_wav
    from frontends.server import build_app
    from tests.media import scene, spoken, to_48k, write_y4m

    write_wav(tmp_path / "mic.wav", to_48k(spoken("what do you see", lead_s=1.0, tail_s=8.0)), 48000)
    write_y4m(tmp_path / "camera.y4m", scene(256))

    async def main():
        app = build_app(Agent.from_pretrained("default", AgentConfig(max_sessions=1)), token="t0k")
        return await page_reports(app, "?token=t0k&autoconnect=1&report=9", tmp_path / "profile",
                                  f"--use-file-for-fake-audio-capture={tmp_path / 'mic.wav'}",
                                  f"--use-file-for-fake-video-capture={tmp_path / 'camera.y4m'}", polls=400)

    reports = asyncio.run(main())
    assert reports, "the page never reported back"
    r = reports[0]
    assert r["connected"] and r["stats"]["video_frames_in"] > 0, r
    words = r["text"].split()
    assert "red" in words and "circles" in words, r["text"]
