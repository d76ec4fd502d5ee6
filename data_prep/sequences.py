"""Interaction rows to per-user sequences, with each rule applied and counted.

`RawRows` (file order) enter; `Sequences` (users renumbered 1..U, items 1..I, each
user's items in time order) leave, with a count of the rows each rule removed.
The steps, in order:

1. `unrated` (anime only): rows with rating -1 ("watched, not rated") are kept as
   interactions ("keep", the default) or removed ("drop").
2. Time order: a stable sort by (user, timestamp), so rows with equal timestamps
   keep file order, i.e. the order is (timestamp, line number). Files without
   timestamps keep file order.
3. Minimum counts, with the duplicate rule:
   - "sasrec_single_pass": counts on the rows after step 1, duplicates included,
     as SASRec counted them; then the duplicate rule.
   - "kcore": the duplicate rule first, then the k-core to its fixpoint.
   - "none": the duplicate rule only.
   Duplicate (user, item) rows: "keep_first" keeps the earliest in time order
   and removes the others; "keep_all" keeps them all (SASRec's behaviour).
4. Numbering: users from 1 in ascending original id; items from 1 in order of
   first appearance, reading users in that order and each in time order.

Every row read is kept, filtered by a rule, or rejected by the reader:
rows_read == kept + sum(filtered.values()) + rejected.
"""

import dataclasses

import numpy as np

from data_prep import kcore
from data_prep.readers import RawRows
from data_prep.textrows import DataPrepError

FILTERS = ("sasrec_single_pass", "kcore", "none")
DUPLICATES = ("keep_first", "keep_all")
UNRATED = ("keep", "drop")


@dataclasses.dataclass(frozen=True)
class Rules:
    filter: str = "kcore"  # one of FILTERS
    k: int = 5  # minimum rows per user and per item
    duplicates: str = "keep_first"  # one of DUPLICATES
    unrated: str = "keep"  # one of UNRATED; only anime has unrated rows

    def __post_init__(self):
        for name, options in (
            ("filter", FILTERS),
            ("duplicates", DUPLICATES),
            ("unrated", UNRATED),
        ):
            if getattr(self, name) not in options:
                raise DataPrepError(
                    f"{name} must be one of {options}, not {getattr(self, name)!r}"
                )
        if self.k < 1:
            raise DataPrepError(f"k must be >= 1, not {self.k}")


@dataclasses.dataclass
class Sequences:
    """User j (1-based) has items[offsets[j-1]:offsets[j]], oldest first."""

    items: np.ndarray  # new item ids, 1..I
    offsets: np.ndarray  # (U + 1,) int64
    user_ids: np.ndarray  # original id of user j at index j - 1
    item_ids: np.ndarray  # original id of item i at index i - 1
    filtered: dict[str, int]  # rows removed, per rule
    violations: dict[str, int]  # users and items under k in the output
    kcore_passes: int | None

    @property
    def num_users(self) -> int:
        return len(self.offsets) - 1


def _time_order(rows: RawRows, keep: np.ndarray | None) -> np.ndarray:
    """Indices of the kept rows ordered by (user, timestamp), file order among
    ties (a stable sort)."""
    idx = np.flatnonzero(keep) if keep is not None else slice(None)
    user = rows.user[idx]
    if rows.timestamp is None or not user.size:
        order = np.argsort(user, kind="stable")
    else:
        stamp = rows.timestamp[idx]
        lo, hi = int(stamp.min()), int(stamp.max())
        if (int(user.max()) + 1) * (hi - lo + 1) < 2**63:  # fits one int64 key
            key = user.astype(np.int64)
            key *= hi - lo + 1
            key += stamp
            key -= lo
            del stamp
            order = np.argsort(key, kind="stable")
        else:
            order = np.lexsort((stamp, user))
    return order if keep is None else idx[order]


def build(rows: RawRows, rules: Rules) -> Sequences:
    """Applies `rules` to `rows`; see the module docstring for the order."""
    filtered = {"unrated": 0, "duplicate": 0, "min_count": 0}
    keep = None
    if rows.unrated is not None and rules.unrated == "drop":
        keep = ~rows.unrated
        filtered["unrated"] = int(rows.unrated.sum())
    order = _time_order(rows, keep)
    user, item = rows.user[order], rows.item[order]
    del order, keep

    def apply(mask, rule):
        filtered[rule] += int(mask.size - mask.sum())
        return user[mask], item[mask]

    passes = None
    if rules.filter == "sasrec_single_pass":
        user, item = apply(kcore.single_pass_mask(user, item, rules.k), "min_count")
    if rules.duplicates == "keep_first":
        user, item = apply(kcore.first_occurrences(user, item), "duplicate")
    if rules.filter == "kcore":
        mask, passes = kcore.kcore_mask(user, item, rules.k)
        user, item = apply(mask, "min_count")
    if user.size == 0:
        raise DataPrepError(f"no interactions left after the rules {rules}")

    starts = np.flatnonzero(np.r_[True, user[1:] != user[:-1]])
    offsets = np.r_[starts, user.size].astype(np.int64)
    codes, first = np.unique(item, return_index=True)
    by_first = codes[np.argsort(first)]
    new_id = np.zeros(int(codes.max()) + 1, np.int32)
    new_id[by_first] = np.arange(1, len(by_first) + 1)
    return Sequences(
        items=new_id[item],
        offsets=offsets,
        user_ids=rows.user_ids[user[starts]],
        item_ids=rows.item_ids[by_first],
        filtered=filtered,
        violations=kcore.violations(user, item, rules.k),
        kcore_passes=passes,
    )


def pair_directions(seqs: Sequences) -> dict:
    """``{"distinct": N, "also_reversed": R}``: the N distinct ordered pairs
    (a, b) of consecutive different items in the users' sequences, and how
    many of them also occur as (b, a). In time-ordered data many do (two users
    met the same two items in either order); none at all over many pairs says
    that every sequence follows one fixed order of the items, such as a file
    sorted by item id, and "next item" is not next in time."""
    items = seqs.items.astype(np.int64)
    same_user = np.ones(max(items.size - 1, 0), bool)
    same_user[seqs.offsets[1:-1] - 1] = False  # the last item of each user but the last
    a, b = items[:-1][same_user], items[1:][same_user]
    differ = a != b
    a, b = a[differ], b[differ]
    n = int(items.max(initial=0)) + 1
    codes = np.unique(a * n + b)
    first, second = np.divmod(codes, n)
    return {
        "distinct": int(codes.size),
        "also_reversed": int(np.isin(second * n + first, codes).sum()),
    }
