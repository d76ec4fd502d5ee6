"""Several devices and several hosts: the mesh, shardings and placement.

Training is data-parallel over a 1-D :class:`jax.sharding.Mesh`. With the
``batch`` axis, each step's batch rows are split over the devices
(:func:`constrain_batch`, a sharding constraint inside the compiled epoch);
parameters, optimizer state and the dataset are replicated, and XLA's SPMD
partitioner inserts the gradient all-reduce. With the ``members`` axis, an
ensemble's members are split over the devices instead (their leading axis is
sharded; members never communicate). Results equal one device's up to the
order of floating-point reductions, given ``trim_rows=0``: by default on the
CPU one device trims its batches' padding and draws dropout per row group
instead (an equally valid, different run).

Several hosts (processes): call :func:`maybe_initialize_distributed` before
anything else touches JAX; every process then runs the same program on the
same data files, and :func:`replicate` / :func:`shard_members` build global
arrays from each process's identical host copy. On the CPU the processes'
collectives go over TCP (gloo), so several processes on one machine form one
runtime too (``tests/test_multihost.py`` runs two and checks that they give
one process's metrics). Every decision that changes which collectives run
next (stopping at a time limit or on SIGTERM) must be the same on every
process, or one of them waits forever: :func:`any_process` agrees on one.
Files: the processes share one workdir; the checkpoint library writes its
part from each process, everything else is written by :func:`is_primary`
only. Nothing here reads flags: ``experiments/`` maps its flags onto these
functions.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

BATCH = "batch"
MEMBERS = "members"
AXES = (BATCH, MEMBERS)
_CPU_COLLECTIVES = "jax_cpu_collectives_implementation"


def maybe_initialize_distributed(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Joins a multi-process run when ``coordinator`` (``host:port``) is given.

    Returns whether :func:`jax.distributed.initialize` was called. Must run
    before the first JAX computation of the process. On the CPU, collectives
    across processes need an implementation: gloo (TCP) is chosen unless one
    is set (gloo is jax's default in recent releases; older ones had none,
    and a computation spanning two processes then failed).
    """
    if not coordinator:
        if num_processes not in (None, 1):
            raise ValueError("--num_processes > 1 needs --coordinator_address")
        return False
    if (num_processes is None) != (process_id is None):
        raise ValueError(
            "--num_processes and --process_id: give both (or neither, where the "
            "cluster sets them)"
        )
    if num_processes is not None:
        if num_processes < 1:
            raise ValueError(f"--num_processes={num_processes}: must be >= 1")
        if not 0 <= process_id < num_processes:
            raise ValueError(
                f"--process_id={process_id}: must be in [0, {num_processes})"
            )
    if getattr(jax.config, _CPU_COLLECTIVES, "gloo") is None:
        jax.config.update(_CPU_COLLECTIVES, "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator,
        num_processes=num_processes,
        process_id=process_id,
    )
    return True


def is_primary() -> bool:
    """Whether this process writes the run's own files (process 0; always
    true on one process)."""
    return jax.process_index() == 0


def any_process(flag: bool) -> bool:
    """``flag`` or'ed over all processes (``flag`` itself on one process).

    A collective: every process must call it at the same point. Use it for
    host-side decisions that differ between processes (a wall-clock deadline,
    a signal one process got first) and decide what runs next.
    """
    if jax.process_count() == 1:
        return bool(flag)
    flags = multihost_utils.process_allgather(np.asarray(bool(flag)))
    return bool(np.any(flags))


def barrier(name: str) -> None:
    """Waits until every process reaches ``barrier(name)``; nothing on one
    process. For file work done by the primary that the others then read."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def mesh_for(axis: str = BATCH, devices=None) -> Mesh:
    """A 1-D mesh named ``axis`` over ``devices`` (default: every device of
    every process, in :func:`jax.devices` order)."""
    if axis not in AXES:
        raise ValueError(f"mesh axis must be one of {AXES}, got {axis!r}")
    devs = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devs), (axis,))


def _global(tree, mesh: Mesh, spec_of):
    def put(x):
        host = np.asarray(jax.device_get(x))
        sharding = NamedSharding(mesh, spec_of(host))
        return jax.make_array_from_callback(host.shape, sharding, lambda i: host[i])

    return jax.tree.map(put, tree)


def replicate(tree, mesh: Mesh):
    """Every leaf of ``tree`` as a global array replicated over ``mesh``."""
    return _global(tree, mesh, lambda _: P())


def shard_members(tree, mesh: Mesh, axis: str = MEMBERS):
    """Leaves' leading (member) axis split over ``axis`` of ``mesh``; scalars
    are replicated. The member count must be a multiple of the axis size."""
    size = mesh.shape[axis]

    def spec(x):
        if x.ndim == 0:
            return P()
        if x.shape[0] % size:
            raise ValueError(f"{x.shape[0]} members do not split over {size} devices")
        return P(axis)

    return _global(tree, mesh, spec)


def place_members(tree, mesh: Mesh | None):
    """Places pytrees with a leading member axis (state, ``hp``, ``active``)
    on ``mesh``: replicated over a ``batch`` axis (:func:`replicate`), split
    over a ``members`` axis (:func:`shard_members`); unchanged without a mesh.
    """
    if mesh is None:
        return tree
    if MEMBERS in mesh.axis_names:
        return shard_members(tree, mesh)
    return replicate(tree, mesh)


def constrain_batch(x, mesh: Mesh | None, axis: str = BATCH):
    """Inside jit: asks for ``x``'s leading axis to be split over ``axis``.

    A no-op without a mesh, or when the mesh has no ``axis`` (member-sharded
    ensembles keep each member's batch whole).
    """
    if mesh is None or axis not in mesh.axis_names:
        return x
    if x.shape[0] % mesh.shape[axis]:
        raise ValueError(
            f"batch of {x.shape[0]} does not split over {mesh.shape[axis]} devices"
        )
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(axis)))


def describe(mesh: Mesh | None) -> str:
    """One line for logs: the mesh axes and the devices it spans."""
    if mesh is None:
        return f"1 device ({jax.devices()[0].device_kind})"
    kinds = sorted({d.device_kind for d in mesh.devices.flat})
    return (
        f"mesh {dict(mesh.shape)} over {mesh.devices.size} devices "
        f"({', '.join(kinds)}; {jax.process_count()} process(es))"
    )
