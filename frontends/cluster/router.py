"""Serve's request-router API, placing each new conversation on the replica with the most free slots.

Serve's default router picks the shorter queue of two random replicas; a conversation is not a short request,
so placement must see every replica's free slots. Free slots = the replica's own slot count (its routing stats)
minus the requests Serve itself counts on it (its live queue length: one per open conversation, updated the
moment the router sends one, so conversations arriving together still spread out). Routing stats also say
whether the replica keeps real time: a replica that falls behind is chosen only when no other has room.
When every replica is full, the least loaded one still gets the connection and refuses it at once with the
Moshi-protocol "server full" error (WebRTC: 503), never a queue that turns into lag.

Replicas that are stopping (downscaling, a rolling upgrade, a drained node) are no longer candidates here:
Serve removes them, and they finish their live conversations within the graceful-shutdown timeout.
"""

from __future__ import annotations

from ray.serve.request_router import FIFOMixin, PendingRequest, RequestRouter, RunningReplica


class FreeSlotRouter(FIFOMixin, RequestRouter):
    def free_slots(self, replica: RunningReplica) -> float:
        stats = replica.routing_stats or {}
        total = stats.get("slots_total")
        if total is None:  # no stats yet (a replica just started): its slots are all free
            return float(replica.max_ongoing_requests)
        queued = self.replica_queue_len_cache.get(replica.replica_id)
        if queued is None:
            return float(stats.get("slots_free", total))
        return float(total - queued)

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        """Ranks, best first: replicas keeping real time with a free slot (most free first), replicas behind
        real time with a free slot, then every replica (one of them refuses the session at once)."""
        free = {r.replica_id: self.free_slots(r) for r in candidate_replicas}
        with_room = sorted((r for r in candidate_replicas if free[r.replica_id] > 0), key=lambda r: -free[r.replica_id])
        on_time = [r for r in with_room if (r.routing_stats or {}).get("keeps_realtime", True)]
        ranks = [on_time[:1], with_room[:1], list(candidate_replicas)]
        return [rank for rank in ranks if rank]
