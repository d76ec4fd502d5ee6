"""The loop both A/B scripts share (``ab_trim.py``, ``ab_refine.py``)."""

import time

import jax


def alternate(fns, states, hp, active, data, reps):
    """Runs the epoch functions ``fns`` in turn, one warm-up epoch each and then
    ``reps`` timed, so that all see the same background load. Updates
    ``states`` in place; returns ``{name: [seconds per timed epoch]}``."""
    times = {name: [] for name in fns}
    for epoch in range(reps + 1):
        for name, fn in fns.items():
            start = time.perf_counter()
            states[name], stats = fn(states[name], hp, active, data, epoch)
            jax.block_until_ready(stats)
            if epoch:
                times[name].append(time.perf_counter() - start)
    return times
