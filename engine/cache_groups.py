"""Fast-dLLM's prefix and dual caches for batches of rows (arXiv:2505.22618, Sec. 3.2).

At a block's first step a row takes part in a full forward that fills a `KVCache`; until its block ends,
it then recomputes only a slice: its block and everything after it (`prefix`), or its block alone
(`dual`), attending over the cached keys/values. Rows that share such a cache form a `CacheGroup`. Rows
are right-aligned by left padding, so rows with the same canvas geometry recompute the same slice
counted from the right end: groups formed at different steps or in different forwards merge (their
caches left-padded to one length and concatenated) and share one cached forward. Each row's keys and
values stay its own, so a row's output does not depend on its group.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .models.layers import KVCache
from .rows import Row


@dataclass(eq=False)
class CacheGroup:
    """Rows whose keys/values were computed in one full forward at their block start, and the slice
    [start, end) of the padded sequence that their cached steps recompute (prefix: block to the end;
    dual: the block only)."""

    cache: KVCache
    rows: list[Row]
    length: int  # the padded length of the forward that filled the cache
    start: int
    end: int

    def leave(self, row: Row) -> None:
        keep, at = [], 0
        for r in self.rows:
            n = len(r.sequences())
            if r is not row:
                keep.extend(range(at, at + n))
            at += n
        self.rows.remove(row)
        row.group = None
        if self.rows:
            self.cache.select(torch.tensor(keep, device=row.tokens.device))


def cache_slice(row: Row, length: int) -> tuple[int, int]:
    offset = length - len(row.tokens)
    start, end = row.block_span()
    return offset + start - row.shift, (length if row.params.cache == "prefix" else offset + end)


def form_groups(rows: list[Row], cache: KVCache, length: int, keeps) -> None:
    """Split the filled cache into groups of rows that recompute the same slice at their next step."""
    index, at, by_slice = {}, 0, {}
    for r in rows:
        index[r] = list(range(at, at + len(r.sequences())))
        at += len(index[r])
        if keeps(r):
            by_slice.setdefault(cache_slice(r, length), []).append(r)
    for (start, end), members in by_slice.items():
        sub = KVCache()
        sub.layers = list(cache.layers)
        keep = [i for r in members for i in index[r]]
        if keep != list(range(at)):
            sub.select(torch.tensor(keep, device=members[0].tokens.device))
        group = CacheGroup(cache=sub, rows=members, length=length, start=start, end=end)
        for r in members:
            r.group = group


def _pad_cache(group: CacheGroup, length: int) -> None:
    """Left-pad a group's cache to `length` columns (padding keys are masked out like padding tokens)."""
    extra = length - group.length
    if extra:
        pad = lambda t: F.pad(t, (0, 0, extra, 0))  # [S, KVH, L, D] -> [S, KVH, length, D]
        group.cache.layers = [(pad(k), pad(v)) for k, v in group.cache.layers]
        group.length, group.start, group.end = length, group.start + extra, group.end + extra


def _merge(groups: list[CacheGroup]) -> CacheGroup:
    length = max(g.length for g in groups)
    for g in groups:
        _pad_cache(g, length)
    cache = KVCache()
    for layer in zip(*(g.cache.layers for g in groups), strict=True):  # ((k, v) of each group) per layer
        cache.layers.append((torch.cat([k for k, _ in layer]), torch.cat([v for _, v in layer])))
    merged = CacheGroup(cache=cache, rows=[r for g in groups for r in g.rows], length=length,
                        start=groups[0].start, end=groups[0].end)
    for r in merged.rows:
        r.group = merged
    return merged


def merge_groups(groups: list[CacheGroup], max_tokens: int | None) -> list[CacheGroup]:
    """Merge cache groups that recompute the same slice counted from the right end (rows that joined at
    different steps, or in different forwards), so that they share one cached forward."""
    by_slice: dict[tuple[int, int], list[list[CacheGroup]]] = {}
    cost = lambda gs: sum(len(r.sequences()) for g in gs for r in g.rows) * (gs[0].end - gs[0].start)
    for g in groups:
        batches = by_slice.setdefault((g.length - g.start, g.length - g.end), [[]])
        if batches[-1] and max_tokens is not None and cost(batches[-1] + [g]) > max_tokens:
            batches.append([])
        batches[-1].append(g)
    return [gs[0] if len(gs) == 1 else _merge(gs) for batches in by_slice.values() for gs in batches]
