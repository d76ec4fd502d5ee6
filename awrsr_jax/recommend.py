"""Top-N recommendations from a trained run: the Python API behind
``python -m experiments.recommend``.

A :class:`Recommender` restores the newest checkpoint of a workdir (read-only)
and takes one member's best-validation params. Scoring is the code that
evaluation uses: ``model.score_all`` on the last ``max_len`` items of the
history, left-padded with 0, then ``evaluate.candidate_mask`` removes the padding
id and every item of the history (the whole history, also the part older than
``max_len``); removed items score ``-inf`` and ``jax.lax.top_k`` picks the rest.
So the rank of an item here is its evaluation rank (ties aside: ``top_k``
orders equal scores by id, evaluation counts them against the model).

Item ids are checked on the host before any jitted code runs: JAX clamps an
out-of-range gather silently, so an unknown id would otherwise score as the
last item. A string id must be ASCII digits (``[0-9]+``; ``str.isdigit``
would also accept Arabic-Indic "٣" or "²"). Users are scored in fixed-size
chunks (one compile per history width rounded up to a power of two).

Unfinished runs: a workdir without ``results.json`` (training still running,
stopped, or killed) is served from its newest checkpoint's best params so far;
:attr:`Recommender.finished` is then False and the command line prints a
``warning:`` line on stderr that says so (the answer still goes to stdout).

Shape letters: B users, L max length, H history width, V = num_items + 1.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np

from awrsr_jax import checkpoint, evaluate, models, train
from awrsr_jax.config import Config

CHUNK = 64  # users per compiled call
_ID = re.compile(r"[0-9]+")


class UnknownItemError(ValueError):
    """An item id outside ``1..num_items`` (or not an integer)."""


def check_items(history, num_items: int, where: str = "history") -> np.ndarray:
    """``int32`` ids of ``history``; raises :class:`UnknownItemError` naming the
    first id that is not an integer in ``1..num_items``."""
    out = []
    for x in history:
        ok = isinstance(x, (int, np.integer)) and not isinstance(x, bool)
        if not ok and isinstance(x, str):
            if _ID.fullmatch(x.strip()):
                x, ok = int(x), True
            elif any(c.isdigit() for c in x):
                raise UnknownItemError(
                    f"{where}: item {x!r} is not in the catalogue: ids are written "
                    "in ASCII digits 0-9"
                )
        if not ok or not 1 <= int(x) <= num_items:
            raise UnknownItemError(
                f"{where}: item {x!r} is not in the catalogue (ids 1..{num_items})"
            )
        out.append(int(x))
    if not out:
        raise UnknownItemError(f"{where}: no item ids")
    return np.asarray(out, np.int32)


@functools.partial(jax.jit, static_argnums=(0, 1, 4))
def _top(cfg: Config, num_items: int, params, inp_BxL, n: int, hist_BxH):
    model = models.build(cfg, num_items)
    scores = model.apply(params, inp_BxL, method="score_all")
    where = evaluate.candidate_mask(hist_BxH, num_items)
    return jax.lax.top_k(jnp.where(where, scores, -jnp.inf), n)


@dataclasses.dataclass
class Recommender:
    """One trained member's params with the config and catalogue they need."""

    cfg: Config
    num_items: int
    params: dict
    epoch: int  # epochs trained when the checkpoint was saved
    best_epoch: int
    finished: bool = True  # the run wrote results.json (training ended)

    @classmethod
    def from_workdir(cls, workdir: str, member: int = 0) -> Recommender:
        """Restores ``workdir/checkpoints`` (read-only) for member ``member``."""
        if not os.path.exists(workdir):
            raise ValueError(f"--workdir={workdir}: no such folder")
        if not os.path.isdir(workdir):
            raise ValueError(f"--workdir={workdir}: is a file, not a run's folder")
        store = checkpoint.Store(os.path.join(workdir, "checkpoints"), read_only=True)
        try:
            meta = store.read_meta()
            cfg = Config.from_dict(meta["config"])
            seeds = meta["seeds"]
            if not 0 <= member < len(seeds):
                raise ValueError(f"--member={member}: the run has {len(seeds)}")
            template = train.LoopState.template(cfg, meta["num_items"], seeds)
            loop, _ = store.restore(template)
        finally:
            store.close()
        return cls(
            cfg=cfg,
            num_items=int(meta["num_items"]),
            params=checkpoint.member_params(loop.best_params, member),
            epoch=loop.epoch,
            best_epoch=int(loop.best_epoch[member]),
            finished=os.path.isfile(os.path.join(workdir, "results.json")),
        )

    def unfinished_warning(self, workdir: str) -> str | None:
        """The ``warning:`` line for a run that has not finished, else None."""
        if self.finished:
            return None
        return (
            f"warning: {workdir} has no results.json: training has not finished; "
            f"answering with the best params so far (checkpoint after "
            f"{self.epoch} epochs, best validation at epoch {self.best_epoch})"
        )

    def recommend(self, histories, top_n: int = 10, names=None) -> list[dict]:
        """``[{"items": [...], "scores": [...]}]``, best first, per history.

        ``names`` label each history in error messages (default
        ``history[i]``). At most ``num_items - len(history)`` items come back.
        """
        if top_n < 1:
            raise ValueError(f"--top_n={top_n}: must be >= 1")
        names = names or [f"history[{i}]" for i in range(len(histories))]
        hists = [check_items(h, self.num_items, w) for h, w in zip(histories, names)]
        n = min(top_n, self.num_items)
        out = []
        for lo in range(0, len(hists), CHUNK):
            part = hists[lo : lo + CHUNK]
            width = 1 << max(len(h) for h in part).bit_length()
            inp = np.zeros((CHUNK, self.cfg.max_len), np.int32)
            hist = np.zeros((CHUNK, width), np.int32)
            for r, h in enumerate(part):
                recent = h[-self.cfg.max_len :]
                inp[r, self.cfg.max_len - len(recent) :] = recent
                hist[r, : len(h)] = h
            vals, ids = _top(self.cfg, self.num_items, self.params, inp, n, hist)
            vals, ids = np.asarray(vals), np.asarray(ids)
            for r in range(len(part)):
                keep = np.isfinite(vals[r])
                out.append(
                    {
                        "items": [int(i) for i in ids[r][keep]],
                        "scores": [float(v) for v in vals[r][keep]],
                    }
                )
        return out


def to_json(record: dict) -> str:
    return json.dumps(record, separators=(",", ":"))
