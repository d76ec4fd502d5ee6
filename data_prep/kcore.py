"""Row filters over interactions: SASRec's single pass, the k-core, duplicates.

Inputs are parallel arrays of dense user and item codes (one entry per row);
outputs are boolean keep-masks over the rows, so callers keep the row order.

- `single_pass_mask`: keep a row when its user and its item each have >= k rows
  in the input, counted once (SASRec's DataProcessing.py). Removing rows lowers
  other counts, so the result can hold users or items under k; `violations`
  reports how many. This is the filter behind the SASRec and AWRSR Beauty files.
- `kcore_mask`: repeat that until nothing changes. The result is the largest
  subset in which every user and item has >= k rows (the k-core of the bipartite
  multigraph), which is unique, so it does not depend on row order, and
  filtering it again changes nothing.
- `first_occurrences`: keep the first row of each (user, item) pair.
"""

import numpy as np


def _counts(codes: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
    if codes.size == 0:
        return np.zeros(0, np.int64)
    size = int(codes.max()) + 1
    if keep is None:
        return np.bincount(codes, minlength=size)
    return np.bincount(codes[keep], minlength=size)


def single_pass_mask(user: np.ndarray, item: np.ndarray, k: int) -> np.ndarray:
    """Rows whose user and item each have >= k rows in the input."""
    return (_counts(user)[user] >= k) & (_counts(item)[item] >= k)


def kcore_mask(user: np.ndarray, item: np.ndarray, k: int) -> tuple[np.ndarray, int]:
    """Rows of the k-core, and the number of passes it took to reach it."""
    keep = np.ones(user.shape, bool)
    passes = 0
    while True:
        passes += 1
        new = keep & (_counts(user, keep)[user] >= k) & (_counts(item, keep)[item] >= k)
        if np.array_equal(new, keep):
            return keep, passes
        keep = new


def violations(user: np.ndarray, item: np.ndarray, k: int) -> dict[str, int]:
    """How many of the users and items present have fewer than k rows."""
    counts_u, counts_i = _counts(user), _counts(item)
    return {
        "users_below_k": int(((counts_u > 0) & (counts_u < k)).sum()),
        "items_below_k": int(((counts_i > 0) & (counts_i < k)).sum()),
    }


def first_occurrences(user: np.ndarray, item: np.ndarray) -> np.ndarray:
    """Mask of the first row of each (user, item) pair, in array order."""
    span = int(item.max(initial=0)) + 1
    small = (int(user.max(initial=0)) + 1) * span < 2**31
    key = user.astype(np.int32 if small else np.int64)
    key *= span
    key += item
    order = np.argsort(key, kind="stable")  # equal pairs keep array order
    key = key[order]
    mask = np.ones(key.shape, bool)
    mask[order[1:][key[1:] == key[:-1]]] = False
    return mask
