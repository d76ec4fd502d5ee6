"""Pure train and eval steps, compiled epochs, and the early-stopping loop.

Everything trains as an ensemble of M members (M = 1 for a plain run): the
state pytree has a leading member axis, and ``jax.vmap`` runs the members in one
compiled program. Members differ in seed and in the hyper-parameters that keep
shapes (``HPARAMS``), given per member in ``hp``.

An epoch is one jitted call: the permutation, batches, negatives and dropout
keys are made on the device from keys folded from (seed, epoch, step), so the
data order depends only on the seed and the host does no per-step work. The
state buffers are donated. Evaluation scores users in chunks (``lax.map``) and
returns each user's pessimistic full-ranking rank; metrics are means of per-user
values, computed once on the host.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from awrsr_jax import models
from awrsr_jax.config import Config
from awrsr_jax.data.dataset import SeqData
from awrsr_jax.data.sampling import sample_negatives
from awrsr_jax.ops import metrics

HPARAMS = ("lr", "l2", "dropout", "pvn_weight")
SELECT = "NDCG@5"  # model selection metric on validation


def hparams(cfg: Config, members: int = 1, **sweep) -> dict:
    """Per-member hyper-parameters ``{name: float32[M]}``; ``sweep`` gives lists."""
    out = {}
    for name in HPARAMS:
        vals = sweep.get(name, [getattr(cfg, name)] * members)
        if len(vals) != members:
            raise ValueError(f"--{name}: {len(vals)} values for {members} members")
        out[name] = jnp.asarray(vals, jnp.float32)
    return out


def _optimizer():
    # The learning rate is applied outside so it can differ per member.
    return optax.scale_by_adam(b1=0.9, b2=0.98, eps=1e-8)


def _model(cfg: Config, num_items: int, hp):
    return models.build(
        cfg, num_items, dropout=hp["dropout"], pvn_weight=hp["pvn_weight"]
    )


def init_member(cfg: Config, num_items: int, seed):
    """Params, optimizer state and the training key of one member."""
    key = jax.random.PRNGKey(seed)
    k_init, k_drop, k_train = jax.random.split(key, 3)
    model = models.build(cfg, num_items)
    seq = jnp.ones((1, cfg.max_len), jnp.int32)
    params = model.init({"params": k_init, "dropout": k_drop}, seq)
    return {"params": params, "opt_state": _optimizer().init(params), "key": k_train}


def init_state(cfg: Config, num_items: int, seeds) -> dict:
    """Stacked member states for ``seeds`` (leading axis M)."""
    fn = jax.jit(jax.vmap(functools.partial(init_member, cfg, num_items)))
    return fn(jnp.asarray(seeds, jnp.uint32))


def _loss_fn(params, cfg, num_items, hp, seq, pos, neg, key):
    model = _model(cfg, num_items, hp)
    loss = model.apply(
        params, seq, pos, neg, True, rngs={"dropout": key}, method="loss"
    )
    penalty = model.apply(params, method="l2_penalty")
    return loss + hp["l2"] * penalty, loss


def train_epoch(cfg: Config, state, hp, active, data: SeqData, epoch):
    """One epoch of one member; ``active=False`` leaves its state untouched."""
    u, bsz = data.num_train, cfg.batch_size
    steps = math.ceil(u / bsz)
    k_epoch = jax.random.fold_in(state["key"], epoch)
    perm = jax.random.permutation(jax.random.fold_in(k_epoch, 0), u)
    idx = jnp.pad(perm, (0, steps * bsz - u)).reshape(steps, bsz)
    real = (jnp.arange(steps * bsz) < u).reshape(steps, bsz)
    tx = _optimizer()
    grad_fn = jax.value_and_grad(_loss_fn, has_aux=True)

    def step(carry, xs):
        params, opt_state = carry
        i, rows, w = xs
        k_neg, k_drop = jax.random.split(jax.random.fold_in(k_epoch, i + 1))
        batch = data.train_seq[rows]
        seq, pos = batch[:, :-1], batch[:, 1:] * w[:, None]
        start = jnp.broadcast_to(data.hist_start[rows][:, None], pos.shape)
        end = jnp.broadcast_to(data.hist_end[rows][:, None], pos.shape)
        neg = sample_negatives(k_neg, data.num_items, data.hist_flat, start, end)
        (_, loss), grads = grad_fn(
            params, cfg, data.num_items, hp, seq, pos, neg, k_drop
        )
        updates, new_opt = tx.update(grads, opt_state)
        new_params = jax.tree.map(lambda p, g: p - hp["lr"] * g, params, updates)

        def keep(new, old):
            return jax.tree.map(lambda a, b: jnp.where(active, a, b), new, old)

        carry = (keep(new_params, params), keep(new_opt, opt_state))
        return carry, (loss, optax.global_norm(grads))

    (params, opt_state), (loss, gnorm) = jax.lax.scan(
        step, (state["params"], state["opt_state"]), (jnp.arange(steps), idx, real)
    )
    new_state = {"params": params, "opt_state": opt_state, "key": state["key"]}
    return new_state, {"loss": jnp.mean(loss), "grad_norm": jnp.mean(gnorm)}


def _split_arrays(data: SeqData, split: str):
    if split == "valid":
        return data.valid_inp, data.valid_tgt, data.eval_hist[:, :-1]
    if split == "test":
        return data.test_inp, data.test_tgt, data.eval_hist
    raise ValueError(f"split must be 'valid' or 'test', got {split!r}")


def candidate_mask(hist_CxH, num_items: int):
    """``[C, V]`` True for real items outside each row's history (0 = padding)."""
    c = hist_CxH.shape[0]
    where = jnp.ones((c, num_items + 1), bool).at[:, 0].set(False)
    return where.at[jnp.arange(c)[:, None], hist_CxH].set(False)


def eval_ranks(cfg: Config, params, data: SeqData, split: str, key=None):
    """Each evaluation user's rank of its target (one member), ``int32[Ue]``.

    ``cfg.protocol == "full"``: among all real items outside the history.
    ``"sampled100"``: among 100 items drawn uniformly from outside the user's
    whole sequence (SASRec paper's protocol; needs ``key``).
    """
    inp, tgt, hist = _split_arrays(data, split)
    model = models.build(cfg, data.num_items)
    n, c = data.num_eval, min(cfg.eval_chunk, data.num_eval)
    chunks = math.ceil(n / c)
    idx = jnp.minimum(jnp.arange(chunks * c), n - 1).reshape(chunks, c)

    def one_chunk(rows):
        scores = model.apply(params, inp[rows], method="score_all")
        where = candidate_mask(hist[rows], data.num_items)
        if cfg.protocol == "full":
            return metrics.target_rank(scores, tgt[rows], where_BxV=where)
        k = jax.random.fold_in(key, rows[0])
        full_hist = jnp.concatenate(
            [data.eval_hist[rows], data.test_tgt[rows][:, None]], 1
        )
        negs = _sample_outside(k, full_hist, data.num_items, 100)
        cand = jnp.concatenate([tgt[rows][:, None], negs], 1)
        sub = jnp.take_along_axis(scores, cand, 1)
        return metrics.target_rank(sub, jnp.zeros(c, jnp.int32))

    return jax.lax.map(one_chunk, idx).reshape(-1)[:n]


def _sample_outside(key, hist_CxH, num_items, k):
    """``k`` uniform items per row, none in the row's history (padded with 0)."""

    def body(state):
        i, negs, bad = state
        new = jax.random.randint(
            jax.random.fold_in(key, i), negs.shape, 1, num_items + 1
        )
        negs = jnp.where(bad, new, negs)
        bad = jnp.any(negs[..., None] == hist_CxH[:, None, :], -1)
        return i + 1, negs, bad

    shape = (hist_CxH.shape[0], k)
    init = (0, jnp.zeros(shape, jnp.int32), jnp.ones(shape, bool))
    _, negs, _ = jax.lax.while_loop(lambda s: (s[0] < 64) & jnp.any(s[2]), body, init)
    return negs


def summarize(ranks) -> dict[str, float]:
    """Mean metrics from ranks (host side)."""
    vals = metrics.rank_metrics(jnp.asarray(ranks))
    return {k: float(jnp.mean(v)) for k, v in vals.items()}


@functools.cache
def compiled(cfg: Config):
    """The jitted, member-vmapped epoch and evaluation functions of ``cfg``."""
    epoch_fn = jax.jit(
        jax.vmap(functools.partial(train_epoch, cfg), in_axes=(0, 0, 0, None, None)),
        donate_argnums=(0,),
    )

    def eval_members(params, data, split, key):
        return jax.vmap(lambda p: eval_ranks(cfg, p, data, split, key))(params)

    eval_fn = jax.jit(eval_members, static_argnums=(2,))
    return epoch_fn, eval_fn


@dataclasses.dataclass
class LoopState:
    """Everything the early-stopping loop needs to continue: a checkpoint.

    ``state`` and ``best_params`` live on the device (leading member axis); the
    rest are host arrays of length M. ``epoch`` is the next epoch to run.
    """

    epoch: int
    state: dict
    best_params: dict
    best: np.ndarray  # best validation NDCG@5 so far
    best_epoch: np.ndarray
    bad: np.ndarray  # evaluations since the last improvement
    active: np.ndarray
    seconds: list  # wall seconds of each epoch call

    @classmethod
    def start(cls, cfg: Config, num_items: int, seeds) -> LoopState:
        m = len(seeds)
        state = init_state(cfg, num_items, seeds)
        return cls(
            epoch=0,
            state=state,
            best_params=jax.tree.map(jnp.copy, state["params"]),
            best=np.full(m, -np.inf),
            best_epoch=np.full(m, -1),
            bad=np.zeros(m, np.int64),
            active=np.ones(m, bool),
            seconds=[],
        )


@dataclasses.dataclass
class FitResult:
    """Per-member outcome: best epoch, validation and test metrics, and ranks."""

    best_epoch: list[int]
    epochs_run: int
    valid: list[dict[str, float]]
    test: list[dict[str, float]]
    test_ranks: np.ndarray  # [M, Ue]
    best_params: dict
    seconds_per_epoch: float


def members_of(cfg: Config, seeds=None, sweep: dict | None = None) -> list[int]:
    """The seeds of an ensemble: given, or ``cfg.seed + m`` for each sweep value."""
    if seeds is not None:
        return [int(s) for s in seeds]
    m = len(next(iter(sweep.values()))) if sweep else 1
    return [cfg.seed + i for i in range(m)]


def fit(
    cfg: Config,
    data: SeqData,
    *,
    seeds=None,
    sweep: dict | None = None,
    loop: LoopState | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    after_epoch: Callable[[LoopState], bool | None] | None = None,
) -> FitResult:
    """Trains M members with early stopping on validation NDCG@5 each.

    A member whose validation NDCG@5 has not improved for ``cfg.patience``
    evaluations is frozen (masked; the program keeps running for the others);
    the loop ends when all are frozen or after ``cfg.epochs``. Test metrics come
    from each member's best-validation parameters.

    ``loop`` resumes from a saved :class:`LoopState`. ``on_epoch`` gets one
    JSON-ready record per active member and epoch; ``after_epoch`` sees the loop
    state after every epoch (to checkpoint it) and stops the run by returning
    True.
    """
    seeds = members_of(cfg, seeds, sweep)
    hp = hparams(cfg, len(seeds), **(sweep or {}))
    loop = loop or LoopState.start(cfg, data.num_items, seeds)
    epoch_fn, eval_fn = compiled(cfg)
    eval_key = jax.random.PRNGKey(cfg.seed + 10_000)
    while loop.epoch < cfg.epochs and loop.active.any():
        epoch, was_active = loop.epoch, loop.active.copy()
        t0 = time.perf_counter()
        loop.state, stats = epoch_fn(
            loop.state, hp, jnp.asarray(was_active), data, epoch
        )
        stats = jax.device_get(stats)
        loop.seconds.append(time.perf_counter() - t0)
        bad_members = np.flatnonzero(~np.isfinite(stats["loss"]) & was_active)
        if bad_members.size:
            raise FloatingPointError(
                f"non-finite training loss at epoch {epoch} (members {bad_members.tolist()})"
            )
        records = [
            {
                "epoch": epoch,
                "member": m,
                "loss": float(stats["loss"][m]),
                "grad_norm": float(stats["grad_norm"][m]),
                "seconds": loop.seconds[-1],
            }
            for m in range(len(seeds))
        ]
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            ranks = np.asarray(eval_fn(loop.state["params"], data, "valid", eval_key))
            for m in np.flatnonzero(was_active):
                records[m]["valid"] = valid = summarize(ranks[m])
                if valid[SELECT] > loop.best[m]:
                    loop.best[m], loop.best_epoch[m], loop.bad[m] = (
                        valid[SELECT],
                        epoch,
                        0,
                    )
                else:
                    loop.bad[m] += 1
                    loop.active[m] = loop.bad[m] < cfg.patience
            improved = jnp.asarray(loop.best_epoch == epoch)
            loop.best_params = _select(improved, loop.state["params"], loop.best_params)
        loop.epoch = epoch + 1
        if on_epoch:
            for m in np.flatnonzero(was_active):
                on_epoch(records[m])
        if after_epoch and after_epoch(loop):
            break
    return finish(cfg, data, loop)


def finish(cfg: Config, data: SeqData, loop: LoopState) -> FitResult:
    """Validation and test metrics of each member's best parameters."""
    _, eval_fn = compiled(cfg)
    eval_key = jax.random.PRNGKey(cfg.seed + 10_000)
    valid_ranks = np.asarray(eval_fn(loop.best_params, data, "valid", eval_key))
    test_ranks = np.asarray(eval_fn(loop.best_params, data, "test", eval_key))
    steady = loop.seconds[1:] or loop.seconds or [float("nan")]
    return FitResult(
        best_epoch=[int(e) for e in loop.best_epoch],
        epochs_run=loop.epoch,
        valid=[summarize(r) for r in valid_ranks],
        test=[summarize(r) for r in test_ranks],
        test_ranks=test_ranks,
        best_params=loop.best_params,
        seconds_per_epoch=float(np.median(steady)),
    )


@jax.jit
def _select(mask_M, new, old):
    def pick(a, b):
        return jnp.where(mask_M.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)

    return jax.tree.map(pick, new, old)
