"""Trimmed vs full-length training epochs, alternated in one process.

    PYTHONPATH=. python benchmarks/ab_trim.py DATA_FILE MAX_LEN MEMBERS REPS [sasrec|stosa]

Compiles the epoch function with ``trim_rows=16`` and with ``trim_rows=0`` and
then alternates their epochs (one warm-up epoch each, then ``REPS`` timed), so
that both see the same background load: the ratio stays meaningful on a busy
machine where ``experiments.bench`` run twice would not be. Prints the median
seconds per epoch of each. Used for ``cpu_bench.md``'s ensemble rows.
"""

import sys

import jax.numpy as jnp
import numpy as np
from ab_epochs import alternate

from awrsr_jax import data as data_lib
from awrsr_jax import train
from awrsr_jax.config import Config

path, max_len, members, reps = sys.argv[1], *map(int, sys.argv[2:5])
backbone = sys.argv[5] if len(sys.argv) > 5 else "sasrec"
shape = {
    "sasrec": dict(hidden=50, layers=2, heads=1, batch_size=128),
    "stosa": dict(hidden=64, layers=1, heads=4, batch_size=256, dropout=0.3,
                  attn_dropout=0.0, pvn_weight=0.005),
}[backbone]  # fmt: skip
data = data_lib.build(data_lib.read_sequences(path), max_len)[0]
cfg = Config(backbone=backbone, max_len=max_len, **shape)
fns = {t: train.compiled(cfg.replace(trim_rows=t))[0] for t in (16, 0)}
hp, active = train.hparams(cfg, members), jnp.ones(members, bool)
states = {t: train.init_state(cfg, data.num_items, list(range(members))) for t in fns}
times = alternate(fns, states, hp, active, data, reps)
for t, ts in times.items():
    print(
        f"{path.rsplit('/', 1)[-1]} L={max_len} members={members} trim_rows={t}: "
        f"median {np.median(ts):.2f} s/epoch {np.round(ts, 2).tolist()}"
    )
