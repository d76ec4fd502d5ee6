"""Three-product vs two-product ``R S^T`` in training epochs, alternated in one process.

    PYTHONPATH=. python benchmarks/ab_refine.py DATA_FILE MAX_LEN MECH REPS

``refine._rs_logits`` forms ``a (W_RQ W_RK^T) a^T`` (two ``n^3`` products per
batch row). This compiles SASRec's epoch function (hidden 50, 2 layers, 1
head, batch 128, the CPU's auto ``trim_rows``) once with that and once with
the former ``(a W_RQ)(a W_RK)^T`` (three products), then alternates their
epochs (one warm-up each, then ``REPS`` timed) so that both see the same
background load. Prints the median seconds per epoch of each and the largest
difference between the two models' parameters after the last epoch.
"""

import math
import sys

import jax
import jax.numpy as jnp
import numpy as np
from ab_epochs import alternate

from awrsr_jax import data as data_lib
from awrsr_jax import train
from awrsr_jax.config import Config
from awrsr_jax.ops import refine


def three_products(a, params, d_head):
    r = a @ params["W_RQ"]
    s = a @ params["W_RK"]
    return (r @ jnp.swapaxes(s, -1, -2)) / math.sqrt(d_head)


path, max_len, mech, reps = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
data = data_lib.build(data_lib.read_sequences(path), max_len)[0]
cfg = Config(backbone="sasrec", max_len=max_len, mech=mech, hidden=50, layers=2,
             heads=1, batch_size=128)  # fmt: skip
cfg = cfg.replace(trim_rows=train.trim_rows(cfg, data))
hp, active = train.hparams(cfg), jnp.ones(1, bool)
two_products = refine._rs_logits
fns, states = {}, {}
for name, rs in (("two", two_products), ("three", three_products)):
    refine._rs_logits = rs  # traced now, so each program keeps its own form
    epoch_fn = train.compiled.__wrapped__(cfg)[0]  # uncached: traced anew
    states[name] = train.init_state(cfg, data.num_items, [0])
    fns[name] = epoch_fn.lower(states[name], hp, active, data, 0).compile()
refine._rs_logits = two_products
times = alternate(fns, states, hp, active, data, reps)
diff = max(
    float(jnp.max(jnp.abs(x - y)))
    for x, y in zip(*(jax.tree.leaves(s["params"]) for s in states.values()))
)
for name, ts in times.items():
    print(
        f"{path.rsplit('/', 1)[-1]} L={max_len} {mech} trim_rows={cfg.trim_rows} "
        f"{name} products: median {np.median(ts):.2f} s/epoch {np.round(ts, 2).tolist()}"
    )
print(f"largest parameter difference after {reps + 1} epochs: {diff:.2e}")
