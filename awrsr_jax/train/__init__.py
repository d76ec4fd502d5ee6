"""Training: pure compiled epochs, ensembles of members, the early-stopping loop.

Everything trains as an ensemble of M members (M = 1 for a plain run), in
one compiled program. The modules, each about one thing:

* :mod:`~awrsr_jax.train.step`: a member's model, loss and optimizer (one batch);
* :mod:`~awrsr_jax.train.epoch`: one epoch as one ``lax.scan`` (data order,
  negatives and dropout keys folded from (seed, epoch, step));
* :mod:`~awrsr_jax.train.trim`: padding trimming (same gradient, less padding);
* :mod:`~awrsr_jax.train.members`: ensembles (vmapped or sequential members),
  per-member hyper-parameters, the jitted epoch and evaluation functions;
* :mod:`~awrsr_jax.train.loop`: early stopping, its resumable state, results.

Files and checkpoints are not written here: :mod:`awrsr_jax.runner` does that.
"""

from awrsr_jax.train.epoch import train_epoch
from awrsr_jax.train.loop import (
    SELECT,
    FitResult,
    LoopState,
    check_finite,
    finish,
    fit,
    members_of,
)
from awrsr_jax.train.members import (
    HPARAMS,
    compiled,
    finite_members,
    hparams,
    init_member,
    init_state,
    over_members,
)
from awrsr_jax.train.trim import TRIM_MAX_FILL, fill, trim_rows

__all__ = [
    "HPARAMS",
    "SELECT",
    "TRIM_MAX_FILL",
    "FitResult",
    "LoopState",
    "check_finite",
    "compiled",
    "fill",
    "finish",
    "finite_members",
    "fit",
    "hparams",
    "init_member",
    "init_state",
    "members_of",
    "over_members",
    "train_epoch",
    "trim_rows",
]
