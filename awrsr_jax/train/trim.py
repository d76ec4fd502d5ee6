"""Padding trimming: the same gradient from batches cut to their real length.

A batch's rows are sorted by input length and split into groups; each group
runs on its last ``w`` positions only. Left padding and the models' trimmed
refinement matrices make the cut exact (tests/test_train_trim.py); only the
dropout masks differ (they are drawn per group). :func:`trim_rows` decides
when it pays (the CPU; data with enough padding).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from awrsr_jax.config import Config
from awrsr_jax.data import dataset
from awrsr_jax.data.dataset import SeqData
from awrsr_jax.train.step import model_of


def trimmed_loss_and_grad(params, cfg, num_items, hp, seq, pos, neg, key, groups):
    """:func:`awrsr_jax.train.step.loss_fn` on one batch with the padding cut:
    ``(loss, grads, penalty)``, the mean loss, the gradient of loss + penalty,
    and the penalty.

    The batch's rows are sorted by input length and split into ``groups``
    groups; each group runs on its last ``w`` positions only, ``w`` the
    smallest :func:`dataset.bucket_lengths` width that holds its longest row
    (a ``lax.switch``: one compiled shape per width). Each group's mean loss
    is weighted by its share of the batch's targets, so the sum is the batch's
    mean loss and its gradient the full-length gradient. On short-sequence
    data (Beauty: mean length 9 at ``max_len`` 100) most groups run at width
    8 or 16.
    """
    b, n = seq.shape
    lens = jnp.where(jnp.any(pos > 0, 1), jnp.sum(seq > 0, 1), 0)
    order = jnp.argsort(lens)
    size = -(-b // groups)

    def group(x):
        x = jnp.pad(x[order], ((0, groups * size - b),) + ((0, 0),) * (x.ndim - 1))
        return x.reshape((groups, size) + x.shape[1:])

    seq_g, pos_g, neg_g, lens_g = map(group, (seq, pos, neg, lens))
    widths = dataset.bucket_lengths(n)
    which = jnp.searchsorted(jnp.asarray(widths), jnp.max(lens_g, 1), side="left")
    total = jnp.maximum(jnp.sum(pos > 0), 1).astype(jnp.float32)
    model = model_of(cfg, num_items, hp)

    def branch(w):
        def loss_of(p, s, ps, ng, k):
            mean = model.apply(
                p, s[:, n - w :], ps[:, n - w :], ng[:, n - w :], True,
                rngs={"dropout": k}, method="loss",
            )  # fmt: skip
            return mean * jnp.sum(ps > 0) / total

        return jax.value_and_grad(loss_of)

    branches = [branch(w) for w in widths]

    def body(acc, xs):
        i, s, ps, ng = xs
        k = jax.random.fold_in(key, i)
        out = jax.lax.switch(which[i], branches, params, s, ps, ng, k)
        return jax.tree.map(jnp.add, acc, out), None

    zero = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
    (loss, grads), _ = jax.lax.scan(
        body, zero, (jnp.arange(groups), seq_g, pos_g, neg_g)
    )
    penalty, g_pen = jax.value_and_grad(
        lambda p: hp["l2"] * model.apply(p, method="l2_penalty")
    )(params)
    return loss, jax.tree.map(jnp.add, grads, g_pen), penalty


TRIM_MAX_FILL = 0.8  # auto trims only where >= 20% of training positions pad


def fill(data: SeqData) -> float:
    """Share of the training input positions that hold an item (not padding)."""
    return float(np.mean(np.asarray(data.train_seq[:, :-1]) > 0))


def trim_rows(cfg: Config, data: SeqData | None = None) -> int:
    """Rows per trimmed training group (0: full batches, members vmapped).

    ``cfg.trim_rows = -1`` (auto) is 16 on the CPU and off on accelerators,
    where its effect has not been measured yet (``experiments.bench
    --trim_rows=16`` does). Given the ``data``, auto is also off when less
    than 20% of the training positions are padding (``fill > TRIM_MAX_FILL``).
    Measured on the quiet CPU: 5.4x faster STOSA Beauty epochs (fill 0.06),
    1.5-2.2x at ML-1M L=200 (fill 0.54), 1.18x at L=100 (0.73), but 1.2x
    slower at L=50 (0.88).
    Trimmed ensembles train their members one after another, not vmapped.
    """
    if cfg.trim_rows >= 0:
        return cfg.trim_rows
    if jax.default_backend() != "cpu":
        return 0
    return 0 if data is not None and fill(data) > TRIM_MAX_FILL else 16
