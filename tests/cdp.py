"""A small Chrome DevTools Protocol driver for the page tests: Debian's headless Chromium, no downloads."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import shutil
import subprocess
from pathlib import Path

import aiohttp

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Browser:
    """`async with Browser(tmp, mic_wav, camera_y4m) as b: await b.open(url); await b.eval("1 + 1")`."""

    def __init__(self, profile: Path, mic: Path | None = None, camera: Path | None = None, deny_media: bool = False):
        self.profile, self.mic, self.camera, self.deny = profile, mic, camera, deny_media
        self._ids = itertools.count(1)

    async def __aenter__(self) -> Browser:
        args = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", f"--user-data-dir={self.profile}",
                "--remote-debugging-port=0", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--autoplay-policy=no-user-gesture-required",
                "--use-fake-device-for-media-stream"]
        args.append("--deny-permission-prompts" if self.deny else "--use-fake-ui-for-media-stream")
        if self.mic:
            args.append(f"--use-file-for-fake-audio-capture={self.mic}")
        if self.camera:
            args.append(f"--use-file-for-fake-video-capture={self.camera}")
        self.proc = await asyncio.create_subprocess_exec(*args, "about:blank", stdout=subprocess.DEVNULL,
                                                         stderr=subprocess.DEVNULL)
        port_file = self.profile / "DevToolsActivePort"
        for _ in range(200):
            if port_file.is_file() and port_file.read_text().strip():
                break
            await asyncio.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        self.http = aiohttp.ClientSession()
        for _ in range(100):
            targets = await (await self.http.get(f"http://127.0.0.1:{port}/json/list")).json()
            pages = [t for t in targets if t["type"] == "page"]
            if pages:
                break
            await asyncio.sleep(0.05)
        self.ws = await self.http.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=64 * 1024 * 1024)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.ws.close()
        await self.http.close()
        self.proc.kill()
        await self.proc.wait()

    async def call(self, method: str, **params) -> dict:
        msg_id = next(self._ids)
        await self.ws.send_str(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            msg = json.loads((await self.ws.receive(timeout=30)).data)
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    async def open(self, url: str) -> None:
        await self.call("Page.enable")
        await self.call("Page.navigate", url=url)
        await self.wait_for("document.readyState === 'complete'")

    async def eval(self, expression: str):
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result.get("result", {}).get("value")

    async def wait_for(self, expression: str, timeout: float = 20.0):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            value = await self.eval(expression)
            if value or loop.time() > deadline:
                return value
            await asyncio.sleep(0.1)

    async def screenshot(self, path: Path, width: int, height: int, mobile: bool = False) -> Path:
        await self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                        mobile=mobile)
        await asyncio.sleep(0.3)
        data = await self.call("Page.captureScreenshot", format="png")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data["data"]))
        return path
