"""One training run: ``python -m experiments.main --backbone=sasrec --mech=value``.

Trains on the embedded synthetic dataset by default, or on a sequence file with
``--dataset=file --data_file=PATH``; writes config.json, metrics.jsonl,
checkpoints/ and results.json under ``--workdir`` and prints the results with
the protocol. Running the same command again resumes from the newest checkpoint;
SIGTERM saves at the next epoch and exits 0; divergence exits 1 naming the epoch.

Several devices: ``--mesh=batch`` splits each training batch over every device
(``--batch_size`` a multiple of the device count), ``--mesh=members`` splits
the ``--seeds`` ensemble over them (``--seeds`` a multiple of it). Several
hosts: run the same command on each with ``--coordinator_address=HOST:PORT
--num_processes=N --process_id=I``.
"""

from __future__ import annotations

import dataclasses
import sys

from absl import app, flags, logging

from awrsr_jax import parallel, runner
from awrsr_jax.config import Config, validate

_HELP = {
    "backbone": "sasrec or stosa",
    "mech": "refinement: none, simp, value, add, stoc (stosa only), value_literal",
    "refine_input": "refinement input A: scores (pre-softmax) or probs",
    "loss": "'' = backbone default (sasrec bce, stosa bpr); sasrec also ce",
    "protocol": "full (all items) or sampled100 (SASRec paper's protocol)",
}
for _f in dataclasses.fields(Config):
    _define = {
        bool: flags.DEFINE_bool,
        int: flags.DEFINE_integer,
        float: flags.DEFINE_float,
        str: flags.DEFINE_string,
    }[type(_f.default)]
    _define(_f.name, _f.default, _HELP.get(_f.name, _f.name.replace("_", " ")))
flags.DEFINE_string("dataset", "synthetic", "synthetic, or file (with --data_file)")
flags.DEFINE_string("data_file", None, "sequence file (user-line or user-item pairs)")
flags.DEFINE_enum("data_format", "auto", ["auto", "user-line", "pairs"], "file layout")
flags.DEFINE_string("workdir", "runs/default", "output folder")
flags.DEFINE_integer("seeds", 1, "train this many seeds as one compiled ensemble")
flags.DEFINE_integer(
    "checkpoint_every", 1, "save the loop state every N epochs (and at the end)"
)
flags.DEFINE_integer("keep_checkpoints", 2, "newest checkpoints kept (each has best)")
flags.DEFINE_float(
    "max_minutes",
    None,
    "end training after this many minutes: test metrics at the best validation "
    "epoch so far; the same command resumes",
)
flags.DEFINE_enum(
    "mesh",
    "none",
    ["none", parallel.BATCH, parallel.MEMBERS],
    "devices: none (one), batch (split each batch), members (split the seeds)",
)
flags.DEFINE_string(
    "coordinator_address", None, "multi-host: HOST:PORT of process 0's coordinator"
)
flags.DEFINE_integer("num_processes", None, "multi-host: number of processes")
flags.DEFINE_integer("process_id", None, "multi-host: this process's index")
FLAGS = flags.FLAGS


def config_from_flags() -> Config:
    return Config(**{f.name: FLAGS[f.name].value for f in dataclasses.fields(Config)})


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    try:
        # Before anything computes with JAX: joining later is refused.
        parallel.maybe_initialize_distributed(
            FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id
        )
        cfg = validate(config_from_flags())
        if FLAGS.max_minutes is not None and FLAGS.max_minutes <= 0:
            raise ValueError(f"--max_minutes={FLAGS.max_minutes}: must be positive")
        if FLAGS.seeds < 1:
            raise ValueError(f"--seeds={FLAGS.seeds}: must be >= 1")
        mesh = None if FLAGS.mesh == "none" else parallel.mesh_for(FLAGS.mesh)
        if mesh is not None:
            print(parallel.describe(mesh), file=sys.stderr)
        runner.run(
            cfg,
            workdir=FLAGS.workdir,
            dataset=FLAGS.dataset,
            data_file=FLAGS.data_file,
            data_format=FLAGS.data_format,
            seeds=[cfg.seed + i for i in range(FLAGS.seeds)],
            checkpoint_every=FLAGS.checkpoint_every,
            keep_checkpoints=FLAGS.keep_checkpoints,
            mesh=mesh,
            max_minutes=FLAGS.max_minutes,
        )
    except runner.Preempted as e:
        # A clean stop: the state is saved and the same command resumes it.
        print(e, file=sys.stderr)
    except (ValueError, OSError, FloatingPointError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    app.run(main)
