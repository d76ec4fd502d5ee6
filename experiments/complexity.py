"""Cost of the refinements (the paper's Section 3.5): parameters and s/epoch.

    python -m experiments.complexity --budget=gpu --datasets=ml-1m,beauty
    python -m experiments.complexity --from_results=runs/reproduce --out=results
    python -m experiments.complexity --budget=smoke

For every dataset x backbone x mechanism at the config ``experiments.reproduce``
starts from (the backbone's registry configuration for the dataset): the
number of parameters, how many of them are refinement matrices (``layers * n
* n`` per matrix), and the median seconds per training epoch of one model
trained alone for ``--time_epochs`` epochs through the one experiment path
(workdirs under ``<out>/timing/``; the first, compiling, epoch is excluded;
validation is not timed). ``--from_results`` instead reads Table 2's cells:
their times are for a K-seed ensemble (the median of the epochs in which
every seed trained), so they say what the Table 2 command paid, not what one
model costs. Writes ``complexity.md`` and ``complexity.json``.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging

from awrsr_jax import datasets, files, results, runner
from experiments.reproduce import BUDGETS, table_entries


def measure(entries, *, epochs: int, out: str, log=sys.stderr) -> list[dict]:
    """One row per ``(dataset, cfg)``: parameter counts and seconds per epoch,
    from a run of one model for ``epochs`` epochs (no early stopping) in the
    workdir ``<out>/timing/<cell name>`` of the one experiment path."""
    from experiments.reproduce import cell_name

    rows, loaded = [], {}
    options = runner.Options(progress="none", checkpoint_every=epochs)
    for ds, cfg in entries:
        cfg = cfg.replace(epochs=epochs, patience=epochs + 1)
        if ds not in loaded:
            loaded[ds] = datasets.load(ds)
        workdir = os.path.join(
            out, "timing", cell_name(ds, cfg, loaded[ds].sha256, [0])
        )
        print(f"timing {ds} {cfg.backbone} {cfg.mech}", file=log)
        res = runner.run(cfg, workdir=workdir, data=loaded[ds], options=options)
        rows.append(dict(dataset=ds, backbone=cfg.backbone, mech=cfg.mech,
                         max_len=cfg.max_len, layers=cfg.layers, members=1,
                         seconds_per_epoch=res["seconds_per_epoch"],
                         params=res["params"], refine_params=res["refine_params"]))  # fmt: skip
    return rows


def from_results(results_dir) -> list[dict]:
    """Rows from Table 2's finished cells (K-seed ensemble timings)."""
    _, cells = results.load_manifest(results_dir, "2")
    rows = []
    for e, run in cells:
        res = run and run["results"]
        if res is not None and res["status"] == "ok":
            c = run["config"]["config"]
            rows.append(dict(dataset=e["dataset"], backbone=e["backbone"],
                             mech=e["mech"], max_len=c["max_len"], layers=c["layers"],
                             members=len(res["seeds"]), params=res["params"],
                             refine_params=res["refine_params"],
                             seconds_per_epoch=res["seconds_per_epoch"]))  # fmt: skip
    return rows


def markdown(rows, device: str) -> str:
    base = {(r["dataset"], r["backbone"]): r for r in rows if r["mech"] == "none"}
    lines = [
        "# Complexity: parameters and seconds per epoch",
        "",
        f"Device: {device}. s/epoch: median over timed epochs (compile excluded); "
        "'members' > 1 means an ensemble of that many seeds was timed, over the "
        "epochs in which every member trained.",
        "",
        "| dataset | backbone | mechanism | max_len | layers | params | "
        "refinement params | params vs none | members | s/epoch | time vs none |",
        "|---" * 11 + "|",
    ]
    for r in rows:
        b = base.get((r["dataset"], r["backbone"]))
        dp = f"{100 * (r['params'] / b['params'] - 1):+.1f}%" if b else "–"
        dt = (f"{r['seconds_per_epoch'] / b['seconds_per_epoch']:.2f}x"
              if b and b["seconds_per_epoch"] else "–")  # fmt: skip
        lines.append(
            f"| {r['dataset']} | {r['backbone']} | {r['mech']} | {r['max_len']} | "
            f"{r['layers']} | {r['params']:,} | {r['refine_params']:,} | {dp} | "
            f"{r['members']} | {r['seconds_per_epoch']:.4f} | {dt} |"
        )
    return "\n".join(lines) + "\n"


def define_flags():
    flags.DEFINE_enum("budget", "gpu", ["gpu", "smoke"], "smoke: tiny CPU run")
    flags.DEFINE_string("datasets", None, "comma list (default: the budget's)")
    flags.DEFINE_string("backbones", None, "comma list (default sasrec,stosa)")
    flags.DEFINE_integer("time_epochs", None, "epochs timed per model (gpu 6, smoke 2)")
    flags.DEFINE_string("from_results", None, "read Table 2's cells instead")
    flags.DEFINE_string("out", None, "output folder (default runs/complexity)")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    f = flags.FLAGS
    smoke = f.budget == "smoke"
    try:
        out = f.out or f.from_results or os.path.join("runs", "complexity")
        if f.from_results:
            rows, device = from_results(f.from_results), "see the Table 2 header"
        else:
            import jax

            names = f.datasets or BUDGETS[f.budget]["datasets"]
            bbs = f.backbones or ("sasrec" if smoke else "sasrec,stosa")
            entries = table_entries("2", names.split(","), bbs.split(","), f.budget,
                                    mechs=["none", "add"] if smoke else None)  # fmt: skip
            epochs = f.time_epochs or (2 if smoke else 6)
            rows = measure(entries, epochs=epochs, out=out)
            dev = jax.devices()[0]
            device = f"{dev.device_kind} ({dev.platform}, jax {jax.__version__})"
        os.makedirs(out, exist_ok=True)
        md = markdown(rows, device)
        files.write_text(os.path.join(out, "complexity.md"), md)
        files.write_json(os.path.join(out, "complexity.json"),
                         {"device": device, "rows": rows})  # fmt: skip
    except (ValueError, OSError, KeyError) as e:
        sys.exit(f"error: {e}")
    print(md)
    print(f"outputs: {out}/complexity.md, {out}/complexity.json")


if __name__ == "__main__":
    define_flags()
    app.run(main)
