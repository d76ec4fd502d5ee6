"""The user state from the last position alone vs the full forward's last row.

    PYTHONPATH=. python benchmarks/ab_last_only.py DATA_FILE MAX_LEN HIDDEN HEADS LAYERS REPS [mech]

Times, alternated in one process so that both see the same background load,
SASRec's ``user_state`` (the last block on the last query row only,
:func:`awrsr_jax.models.common.query_rows`) against the full forward pass cut
to its last row, the form evaluation used before, over every evaluated
user's validation input in chunks of 256 (one warm-up pass each, then
``REPS`` timed). Prints the median seconds per pass of each and their
largest difference.
"""

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from awrsr_jax import data as data_lib
from awrsr_jax import models
from awrsr_jax.config import Config

path, *sizes = sys.argv[1:7]
max_len, hidden, heads, layers, reps = map(int, sizes)
mech = sys.argv[7] if len(sys.argv) > 7 else "none"
data = data_lib.build(data_lib.read_sequences(path), max_len)[0]
cfg = Config(max_len=max_len, hidden=hidden, heads=heads, layers=layers, mech=mech)
model = models.build(cfg, data.num_items)
params = model.init(jax.random.PRNGKey(0), data.valid_inp[:1])
forms = {
    "last position only": jax.jit(lambda p, s: model.apply(p, s, method="user_state")),
    "full forward, last row": jax.jit(lambda p, s: model.apply(p, s)[:, -1]),
}
n = data.valid_inp.shape[0] // 256 * 256
chunks = data.valid_inp[:n].reshape(-1, 256, max_len)


def one_pass(fn):
    out = [fn(params, c) for c in chunks]
    jax.block_until_ready(out)
    return jnp.concatenate(out)


outs = {name: one_pass(fn) for name, fn in forms.items()}  # compile, warm up
times = {name: [] for name in forms}
for _ in range(reps):
    for name, fn in forms.items():
        t0 = time.perf_counter()
        one_pass(fn)
        times[name].append(time.perf_counter() - t0)
a, b = outs.values()
print(
    f"{path.rsplit('/', 1)[-1]} L={max_len} hidden={hidden} heads={heads} "
    f"layers={layers} mech={mech}, {n} users: "
    + "; ".join(f"{k} median {np.median(t):.2f} s" for k, t in times.items())
    + f"; max |difference| {float(jnp.abs(a - b).max()):.1e}"
)
