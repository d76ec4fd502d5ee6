"""Raw public rating files -> user-line sequence files for ml-1m, beauty and anime.

Run `python -m data_prep --dataset=NAME --raw=PATH --out=DIR`, or call
`prepare(NAME, raw=PATH, out=DIR)`. Modules, in the order data flows through them:
fetch (downloads, archives), textrows (lines and typed errors), readers (one per
raw format), sequences (rules: time order, duplicates, k-core), kcore (the count
filters), outputs (files and the Table 1 print), recipes (the three datasets).
"""

from data_prep.recipes import RECIPES, prepare
from data_prep.textrows import DataPrepError

__all__ = ["RECIPES", "DataPrepError", "prepare"]
