"""One training run: ``python -m experiments.main --backbone=sasrec --mech=value``.

Trains on the embedded synthetic dataset by default, on a benchmark
(``--dataset=ml-1m``) or on a sequence file (``--data_file=PATH``); writes
config.json, metrics.jsonl, checkpoints/, test_ranks.npy and results.json
under ``--workdir`` (:func:`awrsr_jax.runner.run`) and prints the results
with the protocol. Running the same command again resumes from the newest
checkpoint; SIGTERM saves at the next epoch and exits 0; divergence exits 1
naming the epoch.

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

from awrsr_jax import datasets, parallel, runner
from awrsr_jax.config import HELP, Config, validate
from awrsr_jax.results import results_table

for _f in dataclasses.fields(Config):
    _define = {
        bool: flags.DEFINE_bool,
        int: flags.DEFINE_integer,
        float: flags.DEFINE_float,
        str: flags.DEFINE_string,
    }[type(_f.default)]
    _define(_f.name, _f.default, HELP[_f.name])
flags.DEFINE_string(
    "dataset",
    None,
    f"data to train on: {', '.join(datasets.NAMES)}, or a sequence file's path "
    "(default synthetic: the embedded generated set)",
)
flags.DEFINE_string(
    "data_file", None, "sequence file (user-line or user-item pairs); used as given"
)
flags.DEFINE_enum("data_format", "auto", ["auto", "user-line", "pairs"], "file layout")
flags.DEFINE_string("workdir", "runs/default", "output folder of this run")
flags.DEFINE_integer(
    "seeds", 1, "train this many seeds (--seed, --seed+1, ...) as one ensemble"
)
flags.DEFINE_integer(
    "checkpoint_every", 1, "save the loop state every N epochs (and at the end)"
)
flags.DEFINE_integer("keep_checkpoints", 2, "newest checkpoints kept (each has best)")
flags.DEFINE_float(
    "max_minutes",
    None,
    "end training after the epoch that passes this many minutes (> 0): test "
    "metrics at the best validation epoch so far; the same command resumes",
)
flags.DEFINE_bool(
    "restart",
    False,
    "train from epoch 0 in a workdir whose results have no readable checkpoint "
    "(old files are moved to replaced-<k>/)",
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
        if FLAGS.seeds < 1:
            raise ValueError(f"--seeds={FLAGS.seeds}: must be >= 1")
        options = runner.Options(
            checkpoint_every=FLAGS.checkpoint_every,
            keep_checkpoints=FLAGS.keep_checkpoints,
            max_minutes=FLAGS.max_minutes,
            restart=FLAGS.restart,
        ).check()
        data = datasets.from_flags(FLAGS.dataset, FLAGS.data_file, FLAGS.data_format)
        mesh = None if FLAGS.mesh == "none" else parallel.mesh_for(FLAGS.mesh)
        if mesh is not None:
            print(parallel.describe(mesh), file=sys.stderr)
        results = runner.run(
            cfg,
            workdir=FLAGS.workdir,
            data=data,
            seeds=[cfg.seed + i for i in range(FLAGS.seeds)],
            options=dataclasses.replace(options, mesh=mesh),
        )
    except runner.Preempted as e:
        # A clean stop: the state is saved and the same command resumes it.
        print(e, file=sys.stderr)
        return
    except (ValueError, OSError, FloatingPointError) as e:
        sys.exit(f"error: {e}")
    if not parallel.is_primary():
        return  # several hosts: process 0 reports for all of them
    print(f"\n{cfg.backbone} mech={cfg.mech} | protocol: {results['protocol']}")
    print(results_table(results))
    if results.get("stopped"):
        print(f"stopped after --max_minutes={FLAGS.max_minutes}; run again to go on")
    print(
        f"best epoch {results['best_epoch']}, {results['epochs_run']} epochs run, "
        f"{results['seconds_per_epoch']:.3f} s/epoch; files in {FLAGS.workdir}"
    )


if __name__ == "__main__":
    app.run(main)
