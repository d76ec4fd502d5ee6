"""A seeded synthetic dataset with sequential structure a model can learn.

Each item has ``num_successors`` fixed successor items. A user starts at a
popular item and, at each step, moves with probability ``p_follow`` to one of the
current item's successors, otherwise to an item drawn from a Zipf-like
popularity. Items never repeat within a user (like the benchmark files), so a
model that learns the successor table ranks the next item near the top, and a
popularity model does much worse: there is a clear gap for attention to close.
"""

from __future__ import annotations

import numpy as np


def generate(
    num_users: int = 1000,
    num_items: int = 500,
    min_len: int = 15,
    max_len: int = 50,
    num_successors: int = 3,
    p_follow: float = 0.8,
    seed: int = 0,
) -> dict[int, list[int]]:
    """Returns ``{user: items}`` with users ``1..num_users``, items ``1..num_items``."""
    if num_users < 1:
        raise ValueError(f"num_users must be >= 1, got {num_users}")
    if not 1 <= min_len <= max_len:
        raise ValueError(
            f"need 1 <= min_len <= max_len, got min_len={min_len}, max_len={max_len}"
        )
    if num_successors < 1:
        raise ValueError(f"num_successors must be >= 1, got {num_successors}")
    if not 0.0 <= p_follow <= 1.0:
        raise ValueError(f"p_follow must be in [0, 1], got {p_follow}")
    if num_items <= max_len + num_successors:
        raise ValueError(
            f"num_items must exceed max_len + num_successors, got num_items="
            f"{num_items}, max_len={max_len}, num_successors={num_successors}"
        )
    rng = np.random.default_rng(seed)
    succ = np.stack(
        [rng.choice(num_items, num_successors, replace=False) for _ in range(num_items)]
    )
    pop = 1.0 / np.arange(1, num_items + 1) ** 0.8
    pop = pop / pop.sum()
    pop = pop[rng.permutation(num_items)]
    seqs = {}
    for u in range(1, num_users + 1):
        length = int(rng.integers(min_len, max_len + 1))
        cur = int(rng.choice(num_items, p=pop))
        seen = {cur}
        items = [cur]
        while len(items) < length:
            if rng.random() < p_follow:
                cand = [int(s) for s in succ[cur] if s not in seen]
                nxt = cand[int(rng.integers(len(cand)))] if cand else None
            else:
                nxt = None
            while nxt is None or nxt in seen:
                nxt = int(rng.choice(num_items, p=pop))
            items.append(nxt)
            seen.add(nxt)
            cur = nxt
        seqs[u] = [i + 1 for i in items]
    return seqs
