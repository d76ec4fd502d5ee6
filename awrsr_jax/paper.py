"""The AWRSR paper's published results, as plain data, to print beside ours.

Source: Yuli Liu, Min Liu, Xiaojing Liu, "Pay Attention to Attention for
Sequential Recommendation", RecSys 2024, arXiv 2410.21048,
https://arxiv.org/html/2410.21048v1 (Table 2: Original against each refinement
mechanism on ML-1M, Beauty and Anime for both backbones; Table 3: the same at
1 to 4 self-attention layers).

Datasets, by the paper's Table 1 (users / items / interactions):

- ``"ml-1m"``: MovieLens-1M, 6.0k / 3.4k / 1.0M (the SASRec paper's file; ours,
  ``ml-1m_sasrec-equivalent.txt``, matches it).
- ``"beauty"``: Amazon Beauty, 52.0k / 57.2k / 0.4M, i.e. SASRec's larger
  Beauty file, not STOSA's 5-core Beauty (22,363 users) that this project
  trains on; absolute values are not comparable.
- ``"anime"``: 73.5k / 12.2k / 1.0M. The user and item counts match the Kaggle
  "Anime Recommendations Database" (CooperUnion; 73,516 users, 12,294 anime),
  whose ``rating.csv`` has 7.8M rows and no timestamps; how the paper reached
  1.0M interactions and a sequence order is not known here.

Layout: ``PAPER_TABLE2[(dataset, backbone, mech)] = {metric: value}`` and
``PAPER_TABLE3[(dataset, backbone, mech, layers)] = {metric: value}``, with
``mech`` in ``MECHS[backbone]`` (``"none"`` = Original). Only values that were
read are present; an unread cell or metric is absent (``.get`` gives None), and
a number is never filled in by guessing. ``TABLE2_METRICS`` are the columns
the project assumes for Table 2 (Recall@1, Recall@5, NDCG@5, as
``experiments/reproduce.py`` prints); the column set itself could not be
checked against the paper here, nor could Table 3's rows and columns.

What could be read: the stored copy of the arXiv HTML page gave
only its opening (title, authors, abstract, start of the introduction) to
every query tried ("Table 2 ML-1M Beauty Anime Recall@1 Recall@5 NDCG@5 SASRec
STOSA simp value add stoc", "Table 3 number of layers", the known values
"0.0959 0.0616", Table 1's dataset statistics, the mechanism names); the
review and summary pages that mirror the paper (emergentmind, liner,
sciencestack, tomesphere, arxivlens) likewise gave no table text, and no public
repository found holds the tables. The three values below are carried over
unchanged from ``experiments/reproduce.py``, where an earlier session entered
them as confirmed (results/README.md, "Paper values"); this session could not
re-read them from the source.

Unread, hence absent:

- Table 2: every (dataset, backbone, mechanism, metric) except the three
  below, i.e. 78 of the 81 values of the assumed layout (``unread_table2()``
  lists them): all of Anime, all of ML-1M / STOSA, all of Beauty / SASRec,
  every refinement row, Recall@1 everywhere, and Beauty / STOSA / Original's
  Recall@5.
- Table 3: every value (``PAPER_TABLE3`` is empty).
"""

from __future__ import annotations

DATASETS = ("ml-1m", "beauty", "anime")
BACKBONES = ("sasrec", "stosa")
# The paper's rows per backbone (stoc is STOSA's only). A fact about the
# paper, so listed here rather than derived from awrsr_jax.registry, whose
# mechanisms may grow beyond the paper's; tests check it is a subset.
MECHS = {
    "sasrec": ("none", "simp", "value", "add"),
    "stosa": ("none", "simp", "value", "add", "stoc"),
}
TABLE2_METRICS = ("Recall@1", "Recall@5", "NDCG@5")
TABLE3_LAYERS = (1, 2, 3, 4)

PAPER_TABLE2: dict[tuple[str, str, str], dict[str, float]] = {
    ("ml-1m", "sasrec", "none"): {"Recall@5": 0.0959, "NDCG@5": 0.0616},
    ("beauty", "stosa", "none"): {"NDCG@5": 0.0285},
}

PAPER_TABLE3: dict[tuple[str, str, str, int], dict[str, float]] = {}


def table2_cells() -> list[tuple[str, str, str]]:
    """Every (dataset, backbone, mech) row of Table 2's assumed layout."""
    return [(d, b, m) for d in DATASETS for b in BACKBONES for m in MECHS[b]]


def unread_table2() -> list[tuple[str, str, str, str]]:
    """(dataset, backbone, mech, metric) of Table 2 that ``PAPER_TABLE2`` lacks."""
    return [
        (*cell, metric)
        for cell in table2_cells()
        for metric in TABLE2_METRICS
        if PAPER_TABLE2.get(cell, {}).get(metric) is None
    ]
