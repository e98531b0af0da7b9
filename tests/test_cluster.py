"""`duplex serve --ray` on a real Ray local cluster (`ray start --head`, then the CLI deploys as a user would):
2 replicas x 2 slots of the default model behind Serve's ingress, driven by Moshi-protocol clients."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray.serve", reason="needs the cluster extra (ray[serve])")
aiohttp = pytest.importorskip("aiohttp")
pytest.importorskip("sphn")

from agent.audio import load_audio  # noqa: E402
from benchmarks.moshi_client import Conversation, converse  # noqa: E402
from benchmarks.ray_cluster import RAY_ENV, LocalRayCluster, health  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
QUESTION = ROOT / "agent" / "examples" / "what_do_you_see.wav"
pytestmark = pytest.mark.skipif(shutil.which("ray", path=str(BIN)) is None and shutil.which("ray") is None,
                                reason="ray CLI not installed")


SERVE_ARGS = ("--pace", "input", "--drain-timeout", "60")


@pytest.fixture(scope="module")
def cluster():
    """2 replicas x 2 slots of the default model on a real local cluster, deployed by the CLI."""
    ray = LocalRayCluster(cpus=2)
    try:
        done = ray.deploy(2, 2, 0.5, extra=SERVE_ARGS)
        assert "Ray Serve" in done.stdout
        yield ray
    finally:
        ray.stop()


@pytest.fixture(scope="module")
def question() -> np.ndarray:
    return load_audio(QUESTION).samples


def _url(port: int, seed: int) -> str:
    return f"ws://127.0.0.1:{port}/api/chat?audio_seed={seed}"


def _plain_serve(question: np.ndarray, seed: int):
    """The same conversation with plain `duplex serve` (in process, same model, pacing and slot count)."""
    from aiohttp.test_utils import TestServer

    from agent import Agent, AgentConfig
    from frontends.server import build_app

    async def main():
        agent = Agent.from_pretrained("default", AgentConfig(max_sessions=2, realtime=False, device="cpu"))
        server = TestServer(build_app(agent), host="127.0.0.1")
        await server.start_server()
        try:
            async with aiohttp.ClientSession() as http:
                return await converse(http, f"ws://127.0.0.1:{server.port}/api/chat?audio_seed={seed}", question,
                                      tail_s=3.0, catch_up_s=120)
        finally:
            await server.close()
            await agent.close()

    return asyncio.run(main())


def test_five_clients_fill_two_replicas_and_the_fifth_is_refused(cluster, question):
    port = cluster.port

    async def main():
        async with aiohttp.ClientSession() as http:
            events = [asyncio.Event() for _ in range(5)]
            tasks = []
            for i in range(5):  # one after another, each placed before the next arrives
                tasks.append(asyncio.ensure_future(converse(http, _url(port, 3), question, tail_s=3.0,
                                                            connected=events[i], catch_up_s=120)))
                await asyncio.wait_for(events[i].wait(), 120)
            return await asyncio.gather(*tasks)

    results = asyncio.run(main())
    accepted = [r for r in results if r.accepted]
    refused = [r for r in results if not r.accepted]
    assert len(accepted) == 4 and len(refused) == 1
    by_replica: dict[str, int] = {}
    for r in accepted:
        by_replica[r.replica] = by_replica.get(r.replica, 0) + 1
    assert sorted(by_replica.values()) == [2, 2], by_replica  # placed by free slots: 2 + 2
    assert refused[0].errors and "server full" in refused[0].errors[0], refused[0].errors
    assert refused[0].close_code == 1013
    # the same seed and input: every accepted session says what plain `duplex serve` says, audio included
    plain = _plain_serve(question, seed=3)
    assert plain.text and "not see anything" in plain.text.replace("don't", "do not")
    for r in accepted:
        assert r.text == plain.text, [(x.text, x.received_s(), x.sent_s, x.errors, x.close_code) for x in accepted]
        n = min(r.pcm.size, plain.pcm.size)
        assert n > 24000 * 3
        assert np.allclose(r.pcm[:n], plain.pcm[:n], atol=2e-3), np.abs(r.pcm[:n] - plain.pcm[:n]).max()


def test_a_dead_replica_ends_only_its_own_sessions(cluster, question):
    port, address = cluster.port, cluster.address
    long_input = np.concatenate([question] * 3)

    async def main():
        async with aiohttp.ClientSession() as http:
            ready, first = [asyncio.Event(), asyncio.Event()], Conversation()
            a = asyncio.ensure_future(converse(http, _url(port, 1), long_input, tail_s=2.0, connected=ready[0],
                                               out=first))
            await ready[0].wait()
            b = asyncio.ensure_future(converse(http, _url(port, 2), long_input, tail_s=2.0, connected=ready[1]))
            await ready[1].wait()
            await asyncio.sleep(3.0)
            victim = first.replica
            await asyncio.to_thread(_kill_replica, address, victim)
            killed_at = asyncio.get_running_loop().time()
            await asyncio.sleep(4.0)
            newcomer = await converse(http, _url(port, 4), question[:24000], tail_s=0.5)
            return await a, await b, newcomer, victim, killed_at

    a, b, newcomer, victim, killed_at = asyncio.run(main())
    assert a.replica == victim and b.replica != victim  # least-loaded placement put them apart
    assert a.closed_by_server and a.sent_s < 10.0  # its session ended with the replica...
    assert a.close_code is not None and a.close_code != 1000, a.close_code  # ...as an error, not a normal close
    assert b.accepted and not b.closed_by_server and not b.errors  # the other replica's session went on
    after = [t for t in b.page_times if t > killed_at]
    assert after and (after[-1] - after[0]) > 5.0  # audio kept coming for the rest of its conversation
    gaps = np.diff(after)
    assert gaps.max() < 1.0, gaps.max()  # never stalled by the other replica's death
    assert newcomer.accepted and newcomer.replica != victim  # a new client lands on a healthy replica


def _kill_replica(address: str, replica_id: str) -> None:
    """SIGKILL the replica's worker process (a crash, not a graceful stop)."""
    code = (f"import os, signal, ray; ray.init(address={address!r}, log_to_driver=False); "
            f"a = ray.get_actor({replica_id!r}, namespace='serve'); "
            "pid = ray.get(a.__ray_call__.remote(lambda self: os.getpid())); os.kill(pid, signal.SIGKILL)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=RAY_ENV)
    assert done.returncode == 0, done.stderr[-3000:]


def test_draining_replica_finishes_its_session_and_takes_no_new_one(cluster, question):
    port = cluster.port
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # the replica killed above is back: two replicas again
        try:
            if len({health(port)["replica"] for _ in range(6)}) == 2:
                break
        except OSError:
            pass
        time.sleep(1)
    long_input = np.concatenate([question] * 2)

    async def main():
        async with aiohttp.ClientSession() as http:
            ready = [asyncio.Event(), asyncio.Event()]
            a = asyncio.ensure_future(converse(http, _url(port, 5), long_input, tail_s=3.0, connected=ready[0]))
            await ready[0].wait()
            b = asyncio.ensure_future(converse(http, _url(port, 5), long_input, tail_s=3.0, connected=ready[1]))
            await ready[1].wait()
            await asyncio.sleep(1.0)
            # scale to one replica: Serve stops one (graceful), which must let its session finish
            await asyncio.to_thread(cluster.deploy, 1, 2, 0.5, extra=SERVE_ARGS, wait=False)
            during = await converse(http, _url(port, 6), question[:24000], tail_s=0.5)
            return await a, await b, during

    a, b, during = asyncio.run(main())
    for r in (a, b):  # neither session was cut: both heard in full, both answered, closed by the client
        assert r.accepted and not r.closed_by_server and not r.errors, (r.errors, r.close_code)
        assert r.sent_s >= long_input.size / 24000 + 2.5
        assert "not see anything" in r.text.replace("don't", "do not")
    survivor = {health(port)["replica"] for _ in range(4)}
    assert len(survivor) == 1
    assert during.accepted and during.replica in survivor  # the new session went to the replica that stays


def test_autoscaling_targets_one_slot_less_than_a_replica_holds():
    """Serve scales on ongoing requests (= open conversations): the target is one less than the slots, so a new
    replica starts before the last slot of the others is taken; a fixed count has no autoscaling."""
    from frontends.cluster.deployment import ClusterConfig

    auto = ClusterConfig(slots_per_replica=8, min_replicas=1, max_replicas=4).autoscaling()
    assert auto["target_ongoing_requests"] == 7 and auto["max_replicas"] == 4 and auto["min_replicas"] == 1
    assert ClusterConfig(replicas=3).autoscaling() is None
    with pytest.raises(ValueError):
        ClusterConfig(min_replicas=5, max_replicas=2)


def test_webrtc_through_serve_answers_with_media_straight_from_the_replica(cluster, question):
    """The browser's path: the offer goes through Serve's ingress to a replica, which answers; RTP then flows
    between the client and that replica's node. The model hears the question and answers over the data
    channel (no camera on this client: it says it sees nothing) and in audio."""
    from aiortc import RTCPeerConnection, RTCSessionDescription

    from tests.media import audio_track, collect_audio

    pcm = np.concatenate([question, np.zeros(24000 * 4, np.float32)])

    async def main():
        async with aiohttp.ClientSession() as http:
            pc = RTCPeerConnection()
            channel = pc.createDataChannel("chat")
            messages, received = [], []
            channel.on("message", lambda m: messages.append(json.loads(m)))
            pc.addTrack(audio_track(pcm))
            collect_audio(pc, received)
            await pc.setLocalDescription(await pc.createOffer())
            resp = await http.post(f"http://127.0.0.1:{cluster.port}/offer",
                                   json={"sdp": pc.localDescription.sdp, "type": pc.localDescription.type})
            assert resp.status == 200, await resp.text()
            replica = resp.headers.get("x-duplex-replica")
            await pc.setRemoteDescription(RTCSessionDescription(**await resp.json()))
            said = ""
            for _ in range(300):
                await asyncio.sleep(0.1)
                said = "".join(m["text"] for m in messages if m["type"] == "text").replace(" ", "")
                if "anything" in said:
                    break
            await pc.close()
            return replica, said, received

    replica, said, received = asyncio.run(main())
    assert replica and replica.startswith("SERVE_REPLICA::")
    assert "seeanything" in said, said
    assert len(received) > 50 and max(received) > 0  # the model's voice came over RTP
