"""The ONNX backend through the front ends that offer it: the Moshi-protocol WebSocket of `duplex serve` and the
terminal UI of `duplex chat` (the library and `duplex run` are in test_onnx_backend.py). Over the WebSocket the
shipped model answers the recorded question with the same text on both backends (same seed)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

aiohttp = pytest.importorskip("aiohttp")
sphn = pytest.importorskip("sphn")
from aiohttp.test_utils import TestServer  # noqa: E402

from agent import Agent, AgentConfig  # noqa: E402
from agent.bundle import load_bundle  # noqa: E402
from agent.registry import resolve  # noqa: E402
from frontends.server import build_app  # noqa: E402

QUESTION = Path(__file__).resolve().parents[1] / "agent" / "examples" / "what_do_you_see.wav"


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(resolve("default"), device="cpu")


def _moshi_client_text(bundle, backend: str) -> str:
    from agent.audio import load_audio

    async def main() -> str:
        # offline pacing: every frame the client sends is heard as sent, however loaded the machine is (a
        # real-time engine plays silence into late audio), so the two backends must answer alike
        agent = Agent(bundle, AgentConfig(max_sessions=1, backend=backend, realtime=False))
        server = TestServer(build_app(agent))
        await server.start_server()
        try:
            async with aiohttp.ClientSession() as http:
                ws = await http.ws_connect(server.make_url("/api/chat").with_query(audio_seed="5"))
                assert (await ws.receive_bytes(timeout=30))[0] == 0x00  # handshake
                writer = sphn.OpusStreamWriter(24000)
                pcm = np.concatenate([load_audio(QUESTION).samples, np.zeros(24000 * 3, np.float32)])
                text: list[str] = []

                async def send():
                    loop = asyncio.get_running_loop()
                    start = loop.time()
                    for k, i in enumerate(range(0, pcm.size, 480)):  # 20 ms chunks paced by the clock, as a mic
                        page = writer.append_pcm(pcm[i:i + 480])
                        if page:
                            await ws.send_bytes(b"\x01" + page)
                        await asyncio.sleep(max(0.0, start + (k + 1) * 0.02 - loop.time()))

                sender = asyncio.ensure_future(send())
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 30
                while loop.time() < deadline and not sender.done():
                    try:
                        msg = await ws.receive(timeout=1)
                    except TimeoutError:
                        continue
                    if msg.type != aiohttp.WSMsgType.BINARY:
                        break
                    if msg.data[0] == 0x02:
                        text.append(msg.data[1:].decode())
                sender.cancel()
                await ws.close()
                return "".join(text).strip()
        finally:
            await server.close()
            await agent.close()

    return asyncio.run(main())


def test_websocket_answers_on_the_onnx_backend_as_on_pytorch(bundle, onnx_cache, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(onnx_cache[0]))
    onnx = _moshi_client_text(bundle, "onnx")
    assert onnx == _moshi_client_text(bundle, "torch")
    assert "not see anything" in onnx.replace("don't", "do not")  # no camera on this protocol


def test_terminal_chat_on_the_onnx_backend(bundle, onnx_cache, monkeypatch, tmp_path):
    from test_tui import _transcript

    from agent.audio import load_audio
    from frontends.tui.app import ChatApp
    from frontends.tui.audio_io import FileIO

    monkeypatch.setenv("XDG_CACHE_HOME", str(onnx_cache[0]))
    samples = np.concatenate([load_audio(QUESTION).samples, np.zeros(24000 * 3, np.float32)])
    audio = FileIO(samples, tmp_path / "out.wav", tail=0.5)

    async def main():
        # offline pacing, as over the WebSocket above: a real-time engine plays silence into audio that arrives
        # late, so on a loaded machine the model would hear another question than the file's
        config = AgentConfig(max_sessions=1, backend="onnx", realtime=False)
        app = ChatApp(lambda: Agent(bundle, config), audio, seed=1)
        async with app.run_test(size=(100, 30)) as pilot:
            # up to 30 s: the engine may still work through the last frames after the file has been fed
            for _ in range(300):
                await pilot.pause(0.1)
                if any(w in _transcript(app) for w in ("thing", "that")):
                    break
            transcript = _transcript(app)
            await pilot.press("q")
        return transcript

    said = asyncio.run(main()).replace(" ", "")  # pieces are written as they come
    # a vision question with no camera: "i do not see anything", or the refusal (both are the model's domain)
    assert "idonotseeanything" in said or "sorryicannotdothat" in said, said
