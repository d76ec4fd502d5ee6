"""Command line: `python -m data_prep --dataset=NAME --raw=PATH --out=DIR`.

Flags go in, one call to `data_prep.prepare` does the work, the stats beside the
paper's Table 1 come out on stdout. A bad flag value or an unusable input ends the
run with one line on stderr (naming the flag, or the file, line and text) and
exit status 1, never a traceback.
"""

import re
import sys

from absl import app, flags

from data_prep import recipes, sequences
from data_prep.textrows import DataPrepError

_DATASET = flags.DEFINE_enum(
    "dataset", None, list(recipes.RECIPES), "Dataset to build."
)
_RAW = flags.DEFINE_string(
    "raw",
    None,
    "Raw file, or a folder holding it. Without it the file is taken "
    "from --cache_dir or downloaded there (checksum verified).",
)
_OUT = flags.DEFINE_string(
    "out", None, "Output folder for NAME.txt, id maps, stats.json."
)
_CACHE_DIR = flags.DEFINE_string(
    "cache_dir",
    None,
    "Download cache (default $XDG_CACHE_HOME or ~/.cache, then awrsr_jax/data_prep).",
)
_FILTER = flags.DEFINE_enum(
    "filter",
    None,
    list(sequences.FILTERS),
    "Minimum-count filter: SASRec's single "
    "pass over raw counts, the iterative k-core, or none. Default: "
    + ", ".join(f"{n} {r.default_filter}" for n, r in recipes.RECIPES.items())
    + ".",
)
_K = flags.DEFINE_integer(
    "k", 5, "Minimum interactions per user and per item.", lower_bound=1
)
_DUPLICATES = flags.DEFINE_enum(
    "duplicates",
    "keep_first",
    list(sequences.DUPLICATES),
    "Repeated (user, item) rows: keep the earliest, or keep all (SASRec).",
)
_UNRATED = flags.DEFINE_enum(
    "unrated",
    "keep",
    list(sequences.UNRATED),
    "Anime rows with rating -1 (watched, not rated): keep as interactions, or drop.",
)
_BAD_ROWS = flags.DEFINE_enum(
    "bad_rows",
    "error",
    ["error", "skip"],
    "Malformed rows: stop with an error naming file and line, or skip and count.",
)
_SHA256 = flags.DEFINE_string(
    "sha256", None, "Pin the SHA-256 of a download that has no published checksum."
)
_URL = flags.DEFINE_string("url", None, "Download from this mirror (https or file://).")

flags.mark_flags_as_required(["dataset", "out"])
flags.register_validator(
    "sha256",
    lambda v: v is None or re.fullmatch(r"[0-9a-fA-F]{64}", v) is not None,
    message="must be 64 hexadecimal digits",
)


def _parse_flags(argv):
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        sys.exit(f"data_prep: {e}")


def main(argv):
    if len(argv) > 1:
        sys.exit(f"data_prep: unexpected arguments {argv[1:]}")
    try:
        recipes.prepare(
            _DATASET.value,
            raw=_RAW.value,
            out=_OUT.value,
            cache_dir=_CACHE_DIR.value,
            filter=_FILTER.value,
            k=_K.value,
            duplicates=_DUPLICATES.value,
            unrated=_UNRATED.value,
            bad_rows=_BAD_ROWS.value,
            sha256=_SHA256.value,
            url=_URL.value,
        )
    except DataPrepError as e:
        sys.exit(f"data_prep: error: {e}")


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
