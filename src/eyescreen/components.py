"""Connected groups: items joined by links, directly or through a chain of them (photographs of one
eye, patients who share one). Plain index graphs, so that `data` (splits), `near_duplicates`,
`photo_links` and `held_out_links` share one helper without reaching into each other."""

from __future__ import annotations

from itertools import pairwise

import numpy as np


def groups(n: int, pairs: list[tuple[int, int, float]]) -> list[list[int]]:
    """Connected groups (two or more members) of `n` items joined by `pairs`, each in index order."""
    if not pairs:
        return []
    from scipy.sparse import coo_matrix  # here: `data` imports this module, and scipy takes a while
    from scipy.sparse.csgraph import connected_components

    i, j, _ = zip(*pairs, strict=True)
    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    members: dict[int, list[int]] = {}
    for k, label in enumerate(labels):
        members.setdefault(label, []).append(k)
    return [m for m in members.values() if len(m) > 1]


def linked_patient_sets(patients: list[str], links: list[list[int]]) -> list[list[str]]:
    """The sets of two or more patients that `links` (groups of indices into `patients`, each photograph's
    patient) join, directly or through a chain of links, each in the order `patients` first names them."""
    names = list(dict.fromkeys(patients))
    index = {p: k for k, p in enumerate(names)}
    edges = [(index[patients[a]], index[patients[b]], 0.0)
             for group in links for a, b in pairwise(group) if patients[a] != patients[b]]  # fmt: skip
    return [[names[k] for k in together] for together in groups(len(names), edges)]
