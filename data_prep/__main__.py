"""Command line: `python -m data_prep --dataset=NAME --raw=PATH --out=DIR`.

Flags go in, one call to `data_prep.prepare` does the work, the stats beside the
paper's Table 1 come out on stdout. A bad flag value or an unusable input ends the
run with one line on stderr (naming the flag, or the file, line and text) and
exit status 1, never a traceback. Existing outputs in `--out` are kept unless
`--overwrite` is given. `--help` lists the flags.

The flags live in a private `FlagValues`, not absl's global FLAGS, so importing
this module (in tests, say) cannot collide with flags of the same name defined by
the experiment entry points.
"""

import re
import sys

from absl import flags

from data_prep import recipes, sequences
from data_prep.textrows import DataPrepError

FLAGS = flags.FlagValues()
_DEFAULTS = ", ".join(f"{n}: {r.default_filter}" for n, r in recipes.RECIPES.items())

flags.DEFINE_enum(
    "dataset", None, list(recipes.RECIPES), "Dataset to build.", flag_values=FLAGS
)
flags.DEFINE_string(
    "raw",
    None,
    "Raw file, or a folder holding it. Without it the file is taken from "
    "--cache_dir, or downloaded there and checksum-verified.",
    flag_values=FLAGS,
)
flags.DEFINE_string(
    "out", None, "Output folder: NAME.txt, id maps, stats.json.", flag_values=FLAGS
)
flags.DEFINE_string(
    "cache_dir",
    None,
    "Download cache (default $XDG_CACHE_HOME or ~/.cache, then awrsr_jax/data_prep).",
    flag_values=FLAGS,
)
flags.DEFINE_enum(
    "filter",
    None,
    list(sequences.FILTERS),
    "Minimum-count filter: SASRec's single pass over raw counts, the iterative "
    f"k-core, or none. Default per dataset ({_DEFAULTS}).",
    flag_values=FLAGS,
)
flags.DEFINE_integer(
    "k", 5, "Minimum rows per user and per item.", lower_bound=1, flag_values=FLAGS
)
flags.DEFINE_enum(
    "duplicates",
    "keep_first",
    list(sequences.DUPLICATES),
    "Repeated (user, item) rows: keep the earliest, or keep all (as SASRec).",
    flag_values=FLAGS,
)
flags.DEFINE_enum(
    "unrated",
    "keep",
    list(sequences.UNRATED),
    "Anime rows with rating -1 (watched, not rated): keep as interactions, or drop.",
    flag_values=FLAGS,
)
flags.DEFINE_enum(
    "bad_rows",
    "error",
    ["error", "skip"],
    "Malformed rows: stop with an error naming file, line and text; or skip and count.",
    flag_values=FLAGS,
)
flags.DEFINE_string(
    "sha256",
    None,
    "Pin the SHA-256 of a download that has no published checksum.",
    flag_values=FLAGS,
)
flags.DEFINE_string(
    "url", None, "Download from this mirror (https or file://).", flag_values=FLAGS
)
flags.DEFINE_boolean(
    "overwrite",
    False,
    "Replace this dataset's files in --out (refused by default).",
    flag_values=FLAGS,
)
flags.mark_flags_as_required(["dataset", "out"], flag_values=FLAGS)
flags.register_validator(
    "sha256",
    lambda v: v is None or re.fullmatch(r"[0-9a-fA-F]{64}", v) is not None,
    message="must be 64 hexadecimal digits",
    flag_values=FLAGS,
)


def parse_flags(argv: list[str]) -> list[str]:
    """Parses argv into FLAGS; exits with one line naming the flag on error."""
    if any(arg in ("-h", "--help", "--helpshort", "--helpfull") for arg in argv[1:]):
        print(FLAGS.get_help())
        sys.exit(0)
    try:
        rest = FLAGS(argv)
    except flags.Error as e:
        sys.exit(f"data_prep: {e}")
    if len(rest) > 1:
        sys.exit(f"data_prep: unexpected arguments {rest[1:]}")
    return rest


def main(argv: list[str]) -> None:
    parse_flags(argv)
    try:
        recipes.prepare(
            FLAGS.dataset,
            raw=FLAGS.raw,
            out=FLAGS.out,
            cache_dir=FLAGS.cache_dir,
            filter=FLAGS.filter,
            k=FLAGS.k,
            duplicates=FLAGS.duplicates,
            unrated=FLAGS.unrated,
            bad_rows=FLAGS.bad_rows,
            sha256=FLAGS.sha256,
            url=FLAGS.url,
            overwrite=FLAGS.overwrite,
        )
    except (DataPrepError, OSError) as e:
        sys.exit(f"data_prep: error: {e}")


if __name__ == "__main__":
    main(sys.argv)
