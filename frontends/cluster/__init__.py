"""`duplex serve --ray`: many conversations over many GPUs and machines on Ray Serve (extra `cluster`).

One Serve replica = one engine with a fixed number of session slots; the 80 ms frame loop stays inside the
replica, and a conversation stays on the replica it was placed on for its whole life. `router.FreeSlotRouter`
places each new conversation on the replica with the most free slots; `deployment.build_app` makes the Serve
application; docs/deploy.md explains the choices.
"""

from __future__ import annotations


def require_ray():
    """Import ray and ray.serve, or say which extra installs them."""
    try:
        import ray
        from ray import serve
    except ImportError as exc:
        raise ImportError("`duplex serve --ray` needs Ray Serve: pip install 'duplex-agent[cluster]' "
                          "(ray[serve])") from exc
    return ray, serve
