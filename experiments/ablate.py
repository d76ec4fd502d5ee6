"""How much a trained model relies on its refinement and on its attention.

    python -m experiments.ablate --dataset=beauty \\
        --workdirs=runs/paper/reproduce/beauty/cells/NAME/seed-3,...

Nothing is retrained. Each workdir's best-validation params (its newest
checkpoint, member ``--member``; :class:`awrsr_jax.recommend.Recommender`)
are evaluated on the test split three ways:

- ``trained``: as trained; equal to the run's ``test_ranks.npy`` where it
  has one (checked: a mismatch is an error, not a row);
- ``no_refinement``: the same params as mechanism ``none``, so every layer
  weighs the values by ``softmax(A)`` and the refinement's matrices go
  unused (for Original, the same as ``trained``);
- ``uniform``: every layer's weights uniform over the positions its mask
  allows (each position's history), so queries and keys play no part: the
  refined logits are replaced by zeros before the layers' masked softmax
  (``awrsr_jax.ops.refine.refined_logits`` patched for the evaluation).

The change of ``no_refinement`` says how much of the trained model's result
its refinement carries; that of ``uniform``, how much the attention pattern
matters at all. Both are evaluation-time interventions on one trained model,
not models trained that way. ``--out`` writes ``ablate.md`` and
``ablate.json``; the Markdown is printed either way.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from unittest import mock

import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from awrsr_jax import datasets, evaluate, files, results
from awrsr_jax.analysis import markdown_table
from awrsr_jax.models import common
from awrsr_jax.recommend import Recommender

VARIANTS = ("trained", "no_refinement", "uniform")


def _uniform_logits(scores, **_):
    return jnp.zeros_like(scores)  # masked softmax of a constant: uniform


def variant_ranks(cfg, params, data, variant: str) -> np.ndarray:
    """Test ranks ``int[U]`` of ``params`` evaluated as ``variant``."""
    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r}: one of {VARIANTS}")
    if variant == "no_refinement":
        cfg = dataclasses.replace(cfg, mech="none")
    if variant != "uniform":
        return np.asarray(evaluate.eval_ranks(cfg, params, data, "test"))
    with mock.patch.object(common.refine, "refined_logits", _uniform_logits):
        return np.asarray(evaluate.eval_ranks(cfg, params, data, "test"))


def ablate(workdir: str, dataset, member: int = 0) -> dict:
    """One row of :mod:`experiments.ablate`: the workdir's test metrics per
    variant. ``dataset`` (a :class:`awrsr_jax.datasets.Dataset`) must be the
    data the run trained on (its ``config.json``'s ``data_sha256``)."""
    saved = files.read_json(os.path.join(workdir, "config.json"))
    if saved.get("data_sha256") not in (None, dataset.sha256):
        raise ValueError(f"{workdir}: trained on other data (sha256 "
                         f"{saved['data_sha256'][:12]}, --dataset has "
                         f"{dataset.sha256[:12]})")  # fmt: skip
    rec = Recommender.from_workdir(workdir, member)
    data = dataset.build(rec.cfg.max_len)
    row = dict(workdir=workdir, member=member, mech=rec.cfg.mech,
               best_epoch=rec.best_epoch, finished=rec.finished)  # fmt: skip
    for variant in VARIANTS:
        ranks = variant_ranks(rec.cfg, rec.params, data, variant)
        if variant == "trained":
            path = os.path.join(workdir, "test_ranks.npy")
            if rec.finished and os.path.exists(path):
                saved_ranks = np.atleast_2d(results.read_ranks(workdir))[member]
                if not np.array_equal(ranks, saved_ranks):
                    raise ValueError(f"{workdir}: the checkpoint's best params do "
                                     "not give its test_ranks.npy")  # fmt: skip
        row[variant] = evaluate.summarize(ranks)
    return row


def render(rows, metric="NDCG@5") -> str:
    def change(r, v):
        base = r["trained"][metric]
        return f"{100 * (r[v][metric] / base - 1):+.1f}%" if base else "–"

    table = [[r["workdir"], r["mech"], r["best_epoch"], f"{r['trained'][metric]:.4f}",
              f"{r['no_refinement'][metric]:.4f} ({change(r, 'no_refinement')})",
              f"{r['uniform'][metric]:.4f} ({change(r, 'uniform')})"]
             for r in rows]  # fmt: skip
    head = ["run", "mech", "best epoch", f"test {metric}", "without refinement",
            "uniform attention"]  # fmt: skip
    return "\n".join([
        f"# Test {metric} of trained runs with their attention changed at "
        "evaluation (`python -m experiments.ablate`)",
        "",
        "Nothing retrained: each run's best-validation params, evaluated as "
        "trained, without the refinement (mechanism none: softmax(A) in every "
        "layer) and with uniform attention over each position's history; the "
        "change against as trained in brackets.",
        "",
        *markdown_table(head, table),
    ])  # fmt: skip


def define_flags():
    flags.DEFINE_list("workdirs", None, "trained runs (comma-separated)")
    flags.DEFINE_string("dataset", None, "the data they trained on (a name or path)")
    flags.DEFINE_integer("member", 0, "which member of an ensemble run")
    flags.DEFINE_string("out", None, "folder to write ablate.md and ablate.json")
    flags.mark_flags_as_required(["workdirs", "dataset"])


def main(argv):
    del argv
    logging.set_verbosity(logging.ERROR)
    f = flags.FLAGS
    try:
        data = datasets.load(f.dataset)
        rows = [ablate(w, data, f.member) for w in f.workdirs]
        md = render(rows)
        if f.out:
            os.makedirs(f.out, exist_ok=True)
            files.write_text(os.path.join(f.out, "ablate.md"), md + "\n")
            files.write_json(os.path.join(f.out, "ablate.json"), rows)
    except (ValueError, OSError, KeyError) as e:
        sys.exit(f"error: {e}")
    print(md)


if __name__ == "__main__":
    define_flags()
    app.run(main)
