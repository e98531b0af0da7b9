"""The browser page as people use it, in Debian's headless Chromium with fake devices, driven over CDP: it shows
the model's answer about what the camera sees, its meters move, it fits a desktop and a phone (screenshots kept
as test artifacts), and every failure a person can meet is shown in words."""

import asyncio
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("aiortc")
from tests.cdp import CHROMIUM, Browser  # noqa: E402

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium not installed (scripts/setup.sh does it)")
ARTIFACTS = Path(os.environ.get("DUPLEX_TEST_ARTIFACTS", Path(__file__).resolve().parent.parent / "build" /
                                "test-artifacts"))
ERROR = "document.getElementById('error').textContent"


async def _server(agent, **kw):
    from aiohttp.test_utils import TestServer

    from frontends.server import build_app

    server = TestServer(build_app(agent, **kw), host="127.0.0.1")
    await server.start_server()
    return server


@pytest.mark.skipif(shutil.which("flite") is None, reason="flite not installed (scripts/setup.sh installs it)")
def test_page_shows_the_answer_meters_and_fits_desktop_and_phone(tmp_path):
    from agent import Agent, AgentConfig
    from agent.audio import write_wav
    from tests.media import scene, spoken, to_48k, write_y4m

    write_wav(tmp_path / "mic.wav", to_48k(spoken("what do you see", lead_s=1.5, tail_s=8.0)), 48000)
    write_y4m(tmp_path / "camera.y4m", scene(256))

    async def main():
        server = await _server(Agent.from_pretrained("default", AgentConfig(max_sessions=1)), token="t0k")
        try:
            async with Browser(tmp_path / "profile", tmp_path / "mic.wav", tmp_path / "camera.y4m") as b:
                await b.open(str(server.make_url("/").with_query(token="t0k")))
                await b.eval("document.getElementById('connect').click()")
                said = "[...document.querySelectorAll('#transcript .line span')].map(s => s.textContent).join(' ')"
                text = await b.wait_for(f"(t => /circles/.test(t) && t)({said})", timeout=40)
                state = await b.eval("window.duplexState")
                status = await b.eval("document.getElementById('status').textContent")
                sees = await b.eval("document.getElementById('sees-note').textContent")
                shots = [await b.screenshot(ARTIFACTS / "page-1280x800.png", 1280, 800),
                         await b.screenshot(ARTIFACTS / "page-390x844.png", 390, 844, mobile=True)]
                overflow = await b.eval("document.documentElement.scrollWidth > window.innerWidth")
            return text, state, status, sees, shots, overflow
        finally:
            await server.close()

    text, state, status, sees, shots, overflow = asyncio.run(main())
    words = (text or "").split()
    assert "red" in words and "circles" in words, text
    assert status == "connected" and sees == "what the model sees now"
    assert state["maxIn"] > 0.01 and state["maxOut"] > 0.01, state  # both meters moved
    assert not overflow  # nothing sticks out sideways on a phone
    for shot in shots:
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 5000


def test_page_tells_people_what_went_wrong(tmp_path):
    from agent import Agent, AgentConfig
    from agent.audio import write_wav
    from tests.conftest import chatty_bundle

    write_wav(tmp_path / "mic.wav", np.zeros(48000, np.float32) + 0.01, 48000)
    bundle = chatty_bundle()

    async def main():
        seen = {}
        agent = Agent(bundle, AgentConfig(max_sessions=1))
        server = await _server(agent, token="right")
        try:
            async with Browser(tmp_path / "p1", tmp_path / "mic.wav") as b:
                await b.open(str(server.make_url("/").with_query(token="wrong")))
                seen["wrong token"] = await b.eval(ERROR)
                await b.open(str(server.make_url("/")))
                seen["no token"] = await b.eval(ERROR)
                holder = agent.session()
                await holder.open()  # the only slot is taken
                await b.open(str(server.make_url("/").with_query(token="right")))
                await b.eval("document.getElementById('connect').click()")
                seen["server full"] = await b.wait_for(ERROR)
                await holder.close()
                await b.eval("document.getElementById('connect').click()")
                await b.wait_for("window.duplexState.connected && window.duplexState.textMessages > 0")
                await server.close()  # the server goes away mid-call
                seen["server stopped"] = await b.wait_for(f"/Connection lost/.test({ERROR}) && {ERROR}", timeout=40)
                seen["reconnect"] = await b.eval("document.getElementById('connect').textContent")
            async with Browser(tmp_path / "p2", tmp_path / "mic.wav", deny_media=True) as b:
                server = await _server(Agent(bundle, AgentConfig(max_sessions=1)))
                await b.open(str(server.make_url("/")))
                await b.eval("document.getElementById('connect').click()")
                seen["microphone denied"] = await b.wait_for(ERROR)
        finally:
            await server.close()
        return seen

    seen = asyncio.run(main())
    assert "Wrong token" in seen["wrong token"] and "needs a token" in seen["no token"], seen
    assert "server is full" in seen["server full"], seen
    assert seen["server stopped"] and seen["reconnect"] == "Reconnect", seen
    assert "Microphone access was denied" in seen["microphone denied"], seen
