"""Echo cancellation, end to end in a simulated room: the model on open speakers hears its own voice through a
room (impulse response, realistic level and delay) together with the user's question."""

import asyncio
import shutil

import numpy as np
import pytest

pytest.importorskip("livekit")
pytestmark = pytest.mark.skipif(shutil.which("flite") is None, reason="flite not installed (scripts/setup.sh)")


@pytest.fixture(scope="module")
def shipped():
    from agent.bundle import load_bundle
    from agent.registry import resolve

    return load_bundle(resolve("default"), device="cpu")


def test_canceller_removes_a_room_echo_of_real_speech():
    from agent.aec import EchoCanceller, erle_db
    from benchmarks.aec import Room
    from tests.conftest import real_speech_24k

    far = real_speech_24k(10.0)[0, 0].numpy()
    room = Room(delay_s=0.1, echo_gain=0.3)
    echo = np.convolve(far, room.impulse_response())[: far.size]
    delay = int(room.delay_s * 24000)
    echo = np.concatenate([np.zeros(delay, np.float32), echo])[: far.size].astype(np.float32)
    mic = echo + np.random.default_rng(0).normal(0, 3e-4, far.size).astype(np.float32)
    aec = EchoCanceller(delay_ms=100, residual_gate=0)  # the canceller alone, without the residual gate
    cleaned = np.concatenate([aec.process(mic[i:i + 480], far[i:i + 480]) for i in range(0, far.size, 480)])
    settled = np.zeros(far.size, bool)
    settled[3 * 24000:] = np.abs(echo[3 * 24000:]) > 0.01
    assert erle_db(mic, cleaned, settled) >= 25  # dB, after convergence


def test_with_aec_the_model_answers_the_user_not_its_own_voice(shipped):
    """The same scene twice: without AEC the model takes its own voice for a barge-in and stops after a word or
    two (the problem); with AEC it finishes the answer and says nothing more."""
    from benchmarks.aec import Room, erle_after, run_room, scene, self_interruptions

    user, end = scene("what is two plus three")
    room = Room(delay_s=0.12, echo_gain=0.2)
    without = asyncio.run(run_room(shipped, user, end, aec=False, room=room))
    with_aec = asyncio.run(run_room(shipped, user, end, aec=True, room=room))
    expected = "two plus three is five"
    assert self_interruptions(without, expected) >= 1, without.utterances  # the feature matters
    assert with_aec.answer.split()[:5] == expected.split(), with_aec.utterances
    assert self_interruptions(with_aec, expected) == 0, with_aec.utterances
    assert erle_after(with_aec, user) >= 25


def test_library_sessions_take_aec_from_the_config():
    from agent import Agent, AgentConfig
    from tests.conftest import chatty_bundle

    async def main():
        async with Agent(chatty_bundle(), AgentConfig(max_sessions=1, aec=True)) as agent, agent.session() as s:
            await s.send_audio(np.zeros(4800, np.float32))
            return s.echo_canceller

    canceller = asyncio.run(main())
    assert canceller is not None and canceller.near_samples == 4800


def test_terminal_audio_cancels_what_it_plays_from_what_it_records(monkeypatch):
    """`duplex chat`'s full-duplex device callback hands the block it plays and the block it records to the
    canceller together, with PortAudio's measured latency as the delay. No sound card here: the PortAudio stream
    is replaced by one that runs the same callback on a room simulation."""
    sd = pytest.importorskip("sounddevice")
    from agent.aec import erle_db
    from benchmarks.aec import Room
    from frontends.tui.audio_io import BLOCK, SoundDeviceIO
    from tests.conftest import real_speech_24k

    streams = []

    class RoomStream:
        latency = (0.04, 0.06)  # what PortAudio would report for this device pair

        def __init__(self, callback, **kw):
            self.callback = callback
            streams.append(self)

        def start(self):
            pass

        def stop(self):
            pass

        def close(self):
            pass

    monkeypatch.setattr(sd, "Stream", RoomStream)
    voice = real_speech_24k(8.0)[0, 0].numpy()
    room = Room(delay_s=0.1, echo_gain=0.3)
    ir, delay = room.impulse_response(), int(room.delay_s * 24000)

    async def main():
        io = SoundDeviceIO(aec=True)
        received = []
        io.start(asyncio.get_running_loop(), received.append)
        assert io.canceller.delay_ms == 100  # input + output latency, as measured for the stream
        played = np.zeros(voice.size + delay, np.float32)
        mics = []
        for i in range(0, voice.size - BLOCK, BLOCK):
            io.play(voice[i:i + BLOCK])  # the model's voice arrives for playback
            past = played[max(0, i - delay - ir.size + 1): max(0, i + BLOCK - delay)]
            echo = np.convolve(past, ir)[-BLOCK - ir.size + 1:][:BLOCK] if past.size >= BLOCK else np.zeros(BLOCK)
            indata = (echo[:BLOCK] if echo.size >= BLOCK else np.pad(echo, (BLOCK - echo.size, 0)))
            outdata = np.zeros((BLOCK, 1), np.float32)
            streams[0].callback(indata.astype(np.float32)[:, None], outdata, BLOCK, None, None)
            played[i:i + BLOCK] = outdata[:, 0]
            mics.append(indata)
            await asyncio.sleep(0)
        await asyncio.sleep(0.05)
        io.stop()
        return np.concatenate(mics).astype(np.float32), np.concatenate(received)

    mic, cleaned = asyncio.run(main())
    settled = np.zeros(mic.size, bool)
    settled[3 * 24000:] = np.abs(mic[3 * 24000:]) > 0.01
    assert erle_db(mic, cleaned, settled) >= 25
