"""`duplex chat`: a terminal client. The app is one more client of the async library API."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import Footer, Header, ProgressBar, RichLog, Static

from frontends.tui.audio_io import AudioIO


def _preview_widget():
    """The camera preview: real pixels through a terminal graphics protocol (kitty's TGP or Sixel, detected by
    textual-image) on a terminal that has one; half-block characters otherwise (and off a terminal)."""
    import sys

    if sys.stdout.isatty():
        try:
            from textual_image.widget import Image as GraphicsImage

            return GraphicsImage(id="preview")
        except ImportError:
            pass
    return Static("", id="preview")


class ChatApp(App):
    TITLE = "duplex chat"
    CSS = """
    #meters { height: 3; }
    .meter-label { width: 8; }
    ProgressBar { width: 1fr; }
    #transcript { height: 1fr; border: round $accent; }
    #stats { height: 1; color: $text-muted; }
    #camera-row { height: auto; }
    #preview { width: 34; height: auto; border: round $accent; }
    #vision { width: 1fr; padding: 0 1; color: $text-muted; }
    """
    BINDINGS = [Binding("m", "toggle_mute", "mute/unmute"), Binding("i", "snapshot", "send camera image"),
                Binding("q", "quit", "quit")]

    def __init__(self, agent_factory, audio: AudioIO, seed: int | None = None, camera=None):
        """`camera`: a `tui.camera.CameraSource` (webcam, looped video file or still image), or a path to one.
        An agent made with `realtime=False` hears every microphone chunk, waiting for the engine when it is
        behind (tests, slow machines); a real-time one drops what compute cannot keep up with."""
        super().__init__()
        self.agent_factory = agent_factory
        self.audio = audio
        self.seed = seed
        if isinstance(camera, (str, Path)):
            from frontends.tui.camera import CameraSource

            camera = CameraSource(str(camera))
        self.camera = camera
        self.camera_frames_sent = 0
        self.views_seen = 0
        self.gate = 0.0
        self._sent_index = -1
        self._preview_index = -1
        self.muted = False
        self.session = None
        self.agent = None
        self.text = ""
        self.last_stats = None
        self.dropped_mic_chunks = 0

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="meters"):
            yield Static("mic", classes="meter-label")
            yield ProgressBar(total=100, show_eta=False, show_percentage=False, id="mic")
            yield Static("model", classes="meter-label")
            yield ProgressBar(total=100, show_eta=False, show_percentage=False, id="out")
        if self.camera is not None:
            with Horizontal(id="camera-row"):
                yield _preview_widget()
                yield Static("camera starting...", id="vision")
        yield RichLog(id="transcript", wrap=True, max_lines=2000)
        yield Static("connecting...", id="stats")
        yield Footer()

    async def on_mount(self) -> None:
        self.agent = self.agent_factory()
        await self.agent.start()
        self.session = self.agent.session(seed=self.seed)
        await self.session.open()
        from agent.events import AudioOut, Error, ImageGate, ImageUpdated, Stats, TextToken, Transcript

        log = self.query_one("#transcript", RichLog)
        self.session.on(AudioOut, lambda ev: self.audio.play(ev.pcm))
        self.session.on(TextToken, self._on_text)
        self.session.on(Transcript, lambda ev: self._end_line())
        self.session.on(Stats, self._on_stats)
        self.session.on(Error, lambda ev: log.write(f"[red]{ev.kind}: {ev.message}[/red]"))
        self.run_worker(self._drain(), exclusive=True, group="events")
        if not self.agent.config.realtime:  # offline pacing: every chunk is heard, however slow the machine
            self._mic_queue: asyncio.Queue = asyncio.Queue()
            self.run_worker(self._feed_offline(), exclusive=True, group="mic")
        self.audio.start(asyncio.get_running_loop(), self._on_mic)
        self.set_interval(1 / 15, self._refresh_meters)
        self.sub_title = f"model: {self.agent.bundle.name}"
        if self.camera is not None:
            self.session.on(ImageUpdated, self._on_view)
            self.session.on(ImageGate, self._on_gate)
            self.camera.start()
            self.set_interval(1 / 10, self._camera_tick)

    async def _drain(self) -> None:
        async for _ in self.session.events():  # callbacks do the work; this keeps the queue empty
            pass

    async def _feed_offline(self) -> None:
        while True:
            chunk = await self._mic_queue.get()
            if self.session.closed:
                return
            await self.session.send_audio(chunk)  # waits while the engine catches up: nothing is dropped

    def _on_mic(self, chunk: np.ndarray) -> None:
        if self.session is None or self.session.closed:
            return
        if self.muted:
            chunk = np.zeros_like(chunk)
        if self.agent.config.realtime:
            self.session.send_audio_nowait(chunk)
        else:
            self._mic_queue.put_nowait(chunk)

    def _on_text(self, ev) -> None:
        self.text += ev.text
        line = self.text.rsplit("\n", 1)[-1]
        log = self.query_one("#transcript", RichLog)
        if " " in ev.text or len(line) > 60:
            log.write(line.strip())
            self.text = ""

    def _end_line(self) -> None:
        if self.text.strip():
            self.query_one("#transcript", RichLog).write(self.text.strip())
        self.text = ""

    def _on_stats(self, ev) -> None:
        self.last_stats = ev
        mute = " · MUTED" if self.muted else ""
        self.query_one("#stats", Static).update(
            f"latency {ev.latency_ms:4.0f} ms · step {ev.step_ms:5.1f} ms (p99 {ev.step_ms_p99:5.1f}) · "
            f"dropped in {ev.dropped_input_frames} · dropped out {ev.dropped_events} · "
            f"underruns {self.audio.underruns}{mute}")

    def _refresh_meters(self) -> None:
        self.query_one("#mic", ProgressBar).update(progress=0 if self.muted else 100 * self.audio.input_level)
        self.query_one("#out", ProgressBar).update(progress=100 * self.audio.output_level)

    def action_toggle_mute(self) -> None:
        self.muted = not self.muted
        self.notify("microphone muted" if self.muted else "microphone live")

    def _camera_tick(self) -> None:
        """Offer the newest camera frame to the session (it samples and skips near-duplicates itself) and
        refresh the preview."""
        from agent.errors import DuplexError

        latest = self.camera.latest()
        vision = self.query_one("#vision", Static)
        if latest is None:
            if self.camera.error:
                vision.update(f"[red]camera: {self.camera.error}[/red]")
            return
        index, rgb = latest
        if index != self._sent_index and self.session is not None and not self.session.closed:
            self._sent_index = index
            try:
                self.session.send_image(rgb)
                self.camera_frames_sent += 1
            except DuplexError as exc:
                vision.update(f"[red]{exc}[/red]")
                return
        if index != self._preview_index:
            self._preview_index = index
            preview = self.query_one("#preview")
            if isinstance(preview, Static):
                from frontends.tui.camera import half_blocks

                preview.update(half_blocks(rgb))
            else:  # a terminal graphics protocol (kitty's TGP or Sixel), through textual-image
                from PIL import Image

                preview.image = Image.fromarray(rgb)
        vision.update(f"camera: {self.camera.kind} {self.camera.spec}\nframes offered {self.camera_frames_sent} · "
                      f"views the model took in {self.views_seen}\nimage gate {self.gate:.2f} "
                      f"(how much its words draw on the view)")

    def _on_view(self, ev) -> None:
        self.views_seen += 1

    def _on_gate(self, ev) -> None:
        self.gate = ev.gate

    def action_snapshot(self) -> None:
        if self.camera is None:
            self.notify("no --camera given", severity="warning")
            return
        if self.camera.kind != "image":
            self.notify("the camera is live: the model already sees it")
            return
        self._sent_index = -1  # a still image: offer it again now
        self._camera_tick()
        self.notify(f"sent {self.camera.spec}")

    async def on_unmount(self) -> None:
        self.audio.stop()
        if self.camera is not None:
            self.camera.stop()
        if self.agent is not None:
            await self.agent.close()
