"""Top-N items for a history, from a trained run, as JSON.

  python -m experiments.recommend --workdir=DIR --history="12 7 301" --top_n=10
  python -m experiments.recommend --workdir=DIR --users_file=users.txt

``--history`` prints one JSON object ``{"history", "items", "scores"}`` (items
best first). ``--users_file`` (user-line layout: ``user item item ...``, oldest
first) prints one JSON object per line, ``{"user", "items", "scores"}``. The
history is removed from the candidates; scores come from the same code as
evaluation (see ``awrsr_jax.recommend``). Bad input exits 1 with one line that
names the id, or the file and line. Ids are ASCII digits only.

A run that has not finished (no ``results.json``: still training, stopped or
killed) is answered from its best params so far, with a ``warning:`` line on
stderr that says so.
"""

from __future__ import annotations

import re
import sys

from absl import app, flags, logging

from awrsr_jax.checkpoint import CheckpointError
from awrsr_jax.data.io import read_sequences
from awrsr_jax.recommend import Recommender, to_json

flags.DEFINE_string("workdir", None, "a run's output folder (holds checkpoints/)")
flags.DEFINE_string("history", None, "item ids, oldest first, space or comma separated")
flags.DEFINE_string("users_file", None, "user-line file: 'user item item ...'")
flags.DEFINE_integer("top_n", 10, "items to return per history")
flags.DEFINE_integer("member", 0, "which ensemble member's best params to use")
FLAGS = flags.FLAGS


def parse_history(text: str) -> list:
    """Tokens of ``--history``; ints where they parse, else the raw token (so
    the range check names it)."""
    toks = text.replace(",", " ").split()
    return [int(t) if re.fullmatch("[0-9]+", t) else t for t in toks]


def main(argv):
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments {argv[1:]}")
    logging.set_verbosity(logging.ERROR)  # orbax warns that the folder is read-only
    try:
        if not FLAGS.workdir:
            raise ValueError("--workdir: required")
        if (FLAGS.history is None) == (FLAGS.users_file is None):
            raise ValueError("give exactly one of --history and --users_file")
        if FLAGS.top_n < 1:
            raise ValueError(f"--top_n={FLAGS.top_n}: must be >= 1")
        rec = Recommender.from_workdir(FLAGS.workdir, FLAGS.member)
        warning = rec.unfinished_warning(FLAGS.workdir)
        if warning:
            print(warning, file=sys.stderr)
        if FLAGS.history is not None:
            hist = parse_history(FLAGS.history)
            (out,) = rec.recommend([hist], FLAGS.top_n, names=["--history"])
            print(to_json({"history": hist} | out))
            return
        seqs = read_sequences(FLAGS.users_file, "user-line", max_item=rec.num_items)
        users = list(seqs)
        outs = rec.recommend([seqs[u] for u in users], FLAGS.top_n)
        for u, out in zip(users, outs):
            print(to_json({"user": u} | out))
    except (ValueError, OSError, CheckpointError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    app.run(main)
