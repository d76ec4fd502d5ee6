"""Time and peak memory of the ml-1m recipe on a large synthetic ratings.dat.

    python -m data_prep.bench_large --lines=10000000

Writes a GroupLens-format file of --lines rows (users and items with skewed
popularity, timestamps with ties, rows in random order, some duplicate pairs) into
a temporary folder, then runs `python -m data_prep --dataset=ml-1m` on it in a
child process and prints lines/s (wall clock, and per CPU-second, which other
load on the machine does not distort) and the child's peak RSS (getrusage), so
the figures are the recipe's own, not the generator's. The folder is deleted
afterwards unless --keep_dir is given.
"""

import pathlib
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
from absl import app, flags

_LINES = flags.DEFINE_integer("lines", 10_000_000, "Rows to generate.", lower_bound=1)
_USERS = flags.DEFINE_integer("users", 70_000, "Number of users.", lower_bound=1)
_ITEMS = flags.DEFINE_integer("items", 20_000, "Number of items.", lower_bound=1)
_SEED = flags.DEFINE_integer("seed", 0, "Generator seed.")
_KEEP_DIR = flags.DEFINE_string("keep_dir", None, "Write here and keep the files.")

_CHUNK = 1_000_000


def write_ratings(path: pathlib.Path, lines: int, users: int, items: int, seed: int):
    """A ratings.dat with `lines` rows, generated and written in bounded chunks."""
    rng = np.random.default_rng(seed)
    item_p = 1.0 / np.arange(1, items + 1) ** 0.8
    item_p /= item_p.sum()
    with open(path, "w", encoding="ascii") as f:
        for start in range(0, lines, _CHUNK):
            n = min(_CHUNK, lines - start)
            u = rng.integers(1, users + 1, n)
            i = rng.choice(items, n, p=item_p) + 1
            r = rng.integers(1, 6, n)
            t = 956_703_932 + rng.integers(0, 10**6, n)  # ~11 days: many ties
            f.write("".join(map("{}::{}::{}::{}\n".format, u, i, r, t)))


def run(directory: pathlib.Path) -> dict:
    ratings = directory / "ratings.dat"
    t0 = time.perf_counter()
    write_ratings(ratings, _LINES.value, _USERS.value, _ITEMS.value, _SEED.value)
    generate_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "data_prep",
            "--dataset=ml-1m",
            f"--raw={ratings}",
            f"--out={directory / 'out'}",
        ],
        check=True,
    )
    seconds = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "lines": _LINES.value,
        "file_mib": ratings.stat().st_size / 2**20,
        "generate_s": generate_s,
        "prepare_s": seconds,
        "lines_per_s": _LINES.value / seconds,
        "cpu_s": usage.ru_utime + usage.ru_stime,  # unaffected by other load
        "peak_rss_mib": usage.ru_maxrss / 1024,  # ru_maxrss is in KiB on Linux
    }


def main(argv):
    del argv
    if _KEEP_DIR.value:
        directory = pathlib.Path(_KEEP_DIR.value)
        directory.mkdir(parents=True, exist_ok=True)
        result = run(directory)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            result = run(pathlib.Path(tmp))
    print(
        f"{result['lines']:,} lines ({result['file_mib']:.0f} MiB, generated in "
        f"{result['generate_s']:.1f} s): prepared in {result['prepare_s']:.1f} s = "
        f"{result['lines_per_s']:,.0f} lines/s (CPU {result['cpu_s']:.1f} s = "
        f"{result['lines'] / result['cpu_s']:,.0f} lines per CPU-second); "
        f"peak RSS {result['peak_rss_mib']:.0f} MiB"
    )


if __name__ == "__main__":
    app.run(main)
