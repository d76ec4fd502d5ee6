"""Which run a workdir holds, and whether a new call may continue it.

A run is named by its identity (:data:`IDENTITY`, written to ``config.json``
and into every checkpoint by :func:`awrsr_jax.runner.run`). A call whose
identity differs is refused (:func:`check_same_run`), except where
continuing gives exactly the run the new call would have been from the
start: a larger ``epochs`` (:func:`longer_cap`), or another ``patience`` or
``report_patience`` while no member has yet waited that long without
improvement (:func:`same_so_far`). :func:`continue_from` finds such a run in
another workdir (a lower cap's cell) and copies it to go on from there.
"""

from __future__ import annotations

import glob
import json
import math
import os
import shutil

from awrsr_jax import files, train
from awrsr_jax.config import Config
from awrsr_jax.datasets import Dataset
from awrsr_jax.results import cut_seeds, read_metrics

IDENTITY = ("config", "dataset", "data_sha256", "seeds", "sweep")
STOPPING = ("patience", "report_patience")


def run_identity(cfg: Config, data: Dataset, seeds, sweep) -> dict:
    """What names a run (:data:`IDENTITY`); ``seeds`` as
    :func:`awrsr_jax.train.members_of` returns them."""
    return {
        "config": json.loads(cfg.to_json()),
        "dataset": data.name,
        "data_sha256": data.sha256,
        "seeds": seeds,
        "sweep": sweep or {},
    }


def longer_cap(old: dict, new: dict) -> bool:
    """Whether config ``new`` raises config ``old``'s epoch cap such that
    continuing ``old`` gives exactly the run ``new`` would have been from the
    start: validation every epoch, or the old cap on the validation schedule
    (the last epoch is always validated)."""
    a, b, every = old.get("epochs"), new.get("epochs"), old.get("eval_every", 1)
    return a is not None and b is not None and b > a and a % every == 0


def member_progress(history) -> dict[int, dict]:
    """Per member of ``history`` (``metrics.jsonl`` records), from its
    validations: ``epochs`` (run up to the last one logged), ``best`` validation NDCG@5
    and its ``best_epoch``, ``wait`` (validations since the best) and
    ``longest`` (the most validations in a row without a better one so far)."""
    out: dict[int, dict] = {}
    valid = [r for r in history if "valid" in r and "member" in r]
    for r in sorted(valid, key=lambda r: (r["member"], r["epoch"])):
        p = out.setdefault(r["member"], dict(best=-math.inf, wait=0, longest=0))
        p["epochs"], v = r["epoch"] + 1, r["valid"][train.SELECT]
        if v > p["best"]:
            p.update(best=v, best_epoch=r["epoch"], wait=0)
        else:
            p["wait"] += 1
            p["longest"] = max(p["longest"], p["wait"])
    return out


def longest_wait(history) -> int:
    """The most validations in a row without a better validation NDCG@5 that
    any member of ``history`` (``metrics.jsonl`` records) has had so far."""
    return max((p["longest"] for p in member_progress(history).values()), default=0)


def same_so_far(old: dict, new: dict, history) -> bool:
    """Whether configs ``old`` and ``new``, which differ at most in
    :data:`STOPPING`, would have trained ``history`` alike: no member has yet
    waited as long as any patience of either (``report_patience`` 0 is off).
    ``history`` None (not known): False."""
    limits = [c.get(k) or 0 for c in (old, new) for k in STOPPING]
    return history is not None and longest_wait(history) < min(
        x for x in limits if x > 0
    )


def workdir_history(workdir: str) -> list[dict] | None:
    """The records of ``workdir``'s ``metrics.jsonl`` (None if unreadable):
    the history a changed patience is judged by before the checkpoint's own."""
    try:
        return read_metrics(workdir)
    except (OSError, ValueError):
        return None


def run_diffs(old: dict, new: dict, history=None) -> list[str]:
    """What keeps ``new`` from continuing ``old`` (saved identities): every
    field of :data:`IDENTITY` that differs, except a :func:`longer_cap` and
    a patience that :func:`same_so_far` allows after ``history``."""
    diffs = []
    for key in IDENTITY:
        a, b = old.get(key), new.get(key)
        if key == "config" and isinstance(a, dict):
            keys = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
            if any(k in STOPPING for k in keys) and same_so_far(a, b, history):
                keys = [k for k in keys if k not in STOPPING]
            diffs += [
                f"{k}: {a.get(k)!r} -> {b.get(k)!r}"
                for k in keys
                if not (k == "epochs" and longer_cap(a, b))
            ]
        elif a != b:
            diffs.append(f"{key}: {str(a)[:40]!r} -> {str(b)[:40]!r}")
    return diffs


def continue_from(candidates, identity: dict, workdir: str, log=None) -> str | None:
    """Copies into the new ``workdir`` the candidate workdir that ``identity``
    can continue (:func:`run_diffs` finds nothing against it: a smaller epoch
    cap, another patience while no member waited that long) and that trained
    longest, so that raising ``epochs`` or ``patience`` goes on instead of
    starting over; returns it (None: none found). A candidate that every
    member left by its patience (:func:`stopped_by_patience`) is the new run
    already, as a higher cap would have stopped it alike: its copy, without
    checkpoints, gets the new identity in ``config.json`` and is finished.
    Any other candidate is copied without its ``results.json`` (those of the
    lower cap) to go on from its checkpoint, and is skipped without one. The
    candidate stays as it is; the copy is whole or absent (a ``.copying``
    folder renamed)."""
    found = []
    for src in candidates:
        if src.endswith(".copying"):
            continue
        try:
            old = files.read_json(os.path.join(src, "config.json"))
        except (OSError, ValueError):
            continue
        history = workdir_history(src) or []
        done = stopped_by_patience(src, old)
        if (
            any(old.get(k) != identity[k] for k in IDENTITY)  # else: in place
            and old["config"].get("epochs", 0) <= identity["config"]["epochs"]
            and not run_diffs(old, identity, history)
            and (done or _has_checkpoint(src))
        ):
            trained = max((r.get("epoch", -1) for r in history), default=-1)
            found.append((trained, src, old, done))
    if not found:
        return None
    _, src, old, done = max(found, key=lambda f: f[0])
    tmp = f"{workdir}.copying"
    shutil.rmtree(tmp, ignore_errors=True)
    skip = ["checkpoints*"] if done else ["results.json"]
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns(".lock", *skip))
    if done:  # the new identity; a cell's seed runs (``seed-<s>/``) its cap
        files.write_json(os.path.join(tmp, "config.json"), old | identity)
        for sub in glob.glob(os.path.join(tmp, "*", "config.json")):
            files.write_json(sub, files.read_json(sub) | {"config": identity["config"]})
    os.replace(tmp, workdir)
    if log is not None:
        a, b = old["config"], identity["config"]
        what = ", ".join(f"{k}: {a.get(k)} -> {b.get(k)}" for k in sorted(b)
                         if a.get(k) != b.get(k))  # fmt: skip
        how = "stands for" if done else "continues"
        print(f"  {how} {src} ({what})", file=log)
    return src


def stopped_by_patience(workdir: str, saved: dict) -> bool:
    """Whether ``workdir`` (identity ``saved``) finished with every member
    stopped by its patience, none by the epoch cap or a time limit
    (:func:`awrsr_jax.results.cut_seeds`)."""
    try:
        res = files.read_json(os.path.join(workdir, "results.json"))
    except (OSError, ValueError):
        return False
    return (
        res.get("status") == "ok"
        and not res.get("stopped")
        and not cut_seeds(res, saved["config"])
    )


def _has_checkpoint(workdir: str) -> bool:
    d = os.path.join(workdir, "checkpoints")
    return os.path.isdir(d) and any(n.isdigit() for n in os.listdir(d))


def check_same_run(old: dict, new: dict, where: str, history=None) -> None:
    """Refuses to continue ``old`` (a saved identity) with a different ``new``
    (:func:`run_diffs`)."""
    diffs = run_diffs(old, new, history)
    if diffs:
        why = ""
        if any(d.split(":")[0] in STOPPING for d in diffs):
            why = (" (no readable metrics.jsonl tells how long members waited)"
                   if history is None else
                   f" (a member has already waited {longest_wait(history)} "
                   "validations without improvement)")  # fmt: skip
        raise ValueError(
            f"{where} belongs to a different run ({'; '.join(diffs[:4])}){why}; "
            "use a new --workdir or the original flags"
        )
