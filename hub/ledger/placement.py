"""Which of the free GPUs a reservation gets: pure functions, no database.

A server's GPUs must share a node; of the nodes that fit a request, the one with the
fewest free GPUs is taken (best fit), so whole nodes stay free for bigger requests.
"""

from __future__ import annotations

from ..inventory import Gpu


def by_node(gpus: list[Gpu]) -> dict[str, list[Gpu]]:
    nodes: dict[str, list[Gpu]] = {}
    for gpu in gpus:
        nodes.setdefault(gpu.node, []).append(gpu)
    return nodes


def _choose(free: list[Gpu], count: int) -> list[Gpu] | None:
    """``count`` of the free GPUs that one server can use, or None.

    GPUs without a node (this machine's) all go together. On a cluster a server's GPUs
    must share a node: take the node with the fewest free GPUs that still fits the
    request (best fit), so whole nodes stay free for bigger requests.
    """
    fitting = [gpus for gpus in by_node(free).values() if len(gpus) >= count]
    if not fitting:
        return None
    return min(fitting, key=len)[:count]


def choose_each(free: list[Gpu], wants: list[tuple[str, int]]) -> dict[str, list[Gpu]] | None:
    """GPUs for every ``(server, count)``, each on one node, biggest requests first."""
    chosen: dict[str, list[Gpu]] = {server: [] for server, _ in wants}
    left = list(free)
    for server, count in sorted(wants, key=lambda w: -w[1]):
        if count == 0:
            continue
        picked = _choose(left, count)
        if picked is None:
            return None
        chosen[server] = picked
        left = [gpu for gpu in left if gpu not in picked]
    return chosen
