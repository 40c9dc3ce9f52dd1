"""Featurization for the train step: texts -> rows of tokens, packed or one text per row.

Real training text is short (about 25 tokens on the bundled mixture), so padding every text to
128 tokens wastes most of the compute. Packing places several texts in one row of `max_seq_len`
tokens (best-fit decreasing); `segments_RxL` numbers the texts of a row 1, 2, ... (0 = padding),
the encoder confines attention to a text's own segment and restarts its positions, and pooling
yields one vector per segment. `row_BxC` / `slot_BxC` say where example b's column c landed.

Devices: each device packs its own share of the examples (its rows serve its anchors' loss), and
the shares are chosen to carry equal tokens (`balanced_order`): a batch drawn from a few datasets
holds one dataset's short texts in one half and another's long texts in the other, so splitting it
in order left one device with twice the rows of the other (padding efficiency 0.78 against 0.93 on
the bundled mixture, docs/benchmarks.md). The loss is the same for any order of the examples.

Static shapes: each device's rows are padded to the smallest of a fixed ladder of row counts that
holds them (`row_sizes`, steps of at most 12.5%), the largest being one text per row, so nothing
is ever dropped or deferred; a run compiles one step function per size it meets (a handful: the
rows a batch needs stay within some +-20% of the mixture's mean). Unpacked featurization is the
same format with one text per row and S = 1.

Shape letters: B examples of this process, C = 2 + max_negatives columns, G devices of this
process, R rows per device, L tokens per row, S segments (texts) per row at most.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

ROW_GROWTH = 1.125  # consecutive row counts differ by at most this factor (<= 12.5% padding rows)


def row_sizes(texts_per_device: int, multiple: int = 1) -> tuple[int, ...]:
    """The fixed row counts per device: a geometric ladder, rounded up to `multiple`.

    From 1/16 of one-text-per-row (texts of ~8 tokens in rows of 128) up to one text per row,
    each size at most ROW_GROWTH times the one below, so rounding a batch up to the next size
    wastes under 12.5% (about 6% on average) while a run still meets only a handful of sizes:
    the rows a batch needs vary by some +-20% around the mixture's mean.
    """
    top = math.ceil(texts_per_device / multiple) * multiple  # one text per row always fits
    sizes = {top}
    size = max(1.0, texts_per_device / 16)
    while size < top:
        sizes.add(min(top, math.ceil(size / multiple) * multiple))
        size *= ROW_GROWTH
    return tuple(sorted(sizes))


def best_fit_decreasing(
    lengths: Sequence[int], capacity: int, max_segments: int
) -> list[tuple[int, int]]:
    """(row, segment index) for each text: longest first, into the fullest row it fits."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    free: list[int] = []  # remaining tokens per row
    used: list[int] = []  # segments per row
    by_free: dict[int, list[int]] = {}  # remaining capacity -> open rows (oldest first)
    place = [(0, 0)] * len(lengths)
    for i in order:
        n = lengths[i]
        row = -1
        for cap in range(n, capacity + 1):  # the tightest row that still fits
            rows = by_free.get(cap)
            if rows:
                row = rows.pop(0)
                break
        if row < 0:
            row = len(free)
            free.append(capacity)
            used.append(0)
        place[i] = (row, used[row])
        free[row] -= n
        used[row] += 1
        if used[row] < max_segments and free[row] > 0:
            by_free.setdefault(free[row], []).append(row)
    return place


def balanced_order(loads: Sequence[int], num_devices: int) -> list[int]:
    """Example indices in device order: `num_devices` equal shares of about equal total load.

    Heaviest first, each to the lightest share that still has room (ties to the first share);
    within a share the examples keep their original order. Deterministic, so every process of a
    multi-host run derives the same order from the same batch.
    """
    per = len(loads) // num_devices
    shares: list[list[int]] = [[] for _ in range(num_devices)]
    total = [0] * num_devices
    for i in sorted(range(len(loads)), key=lambda i: (-loads[i], i)):
        g = min((g for g in range(num_devices) if len(shares[g]) < per), key=lambda g: total[g])
        shares[g].append(i)
        total[g] += loads[i]
    return [i for share in shares for i in sorted(share)]


def featurize(
    examples: Sequence[tuple[str, ...]],
    tokenizer,
    *,
    num_devices: int,
    max_seq_len: int,
    max_negatives: int,
    pad_id: int,
    pack: bool = True,
    max_segments: int = 32,
    bucket_lengths: Sequence[int] = (),
    size_multiple: int = 1,
    prompts: Sequence[str] = (),
) -> dict[str, np.ndarray]:
    """The global batch's examples -> arrays whose leading axis splits evenly over the devices.

    `prompts[c]`, where given, is prepended to column c's texts before tokenization (so it counts
    in `max_seq_len`), as sentence-transformers' trainer does with its `prompts` per column.
    Returns `ids_GRxL`, `segments_GRxL` (int32), `row_BxC`, `slot_BxC` (int32, per device),
    `valid_BxC` (bool) and `example_B` (int32): the B axis is in device order, entry b being
    input example `example_B[b]` (the input order itself unless packed rows are balanced over
    several devices, see balanced_order). Every process packs the whole global batch, so all
    agree on R without talking; `device_slice` then keeps a process's own devices' part.
    """
    num_cols = 2 + max_negatives
    if any(not 0 < b <= max_seq_len for b in bucket_lengths):
        raise ValueError(f"bucket_lengths {tuple(bucket_lengths)} must lie in [1, {max_seq_len}]")
    if prompts and len(prompts) != num_cols:
        raise ValueError(f"{len(prompts)} prompts for {num_cols} columns (2 + max_negatives)")
    if len(examples) % num_devices:
        raise ValueError(f"{len(examples)} examples do not split over {num_devices} devices")
    per_device = len(examples) // num_devices
    valid_BxC = np.zeros((len(examples), num_cols), bool)
    texts = []
    for b, ex in enumerate(examples):
        if not 2 <= len(ex):
            raise ValueError(f"example {b} has {len(ex)} texts, expected at least 2")
        ex = ex[:num_cols]
        valid_BxC[b, : len(ex)] = True
        if prompts:  # an example may have fewer columns than prompts
            ex = [prompt + text for prompt, text in zip(prompts, ex, strict=False)]
        texts.extend(ex)
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
    encoded = iter([e.ids[:max_seq_len] for e in encode(texts)] if texts else [])
    token_ids = [[next(encoded) if v else [] for v in row] for row in valid_BxC]
    order = list(range(len(examples)))
    if pack and num_devices > 1:
        order = balanced_order([sum(map(len, t)) for t in token_ids], num_devices)
        valid_BxC = valid_BxC[order]
        token_ids = [token_ids[i] for i in order]

    row_BxC = np.zeros(valid_BxC.shape, np.int32)
    slot_BxC = np.zeros(valid_BxC.shape, np.int32)
    placements = []
    needed = 0
    for g in range(num_devices):
        cells = [
            (b, c)
            for b in range(g * per_device, (g + 1) * per_device)
            for c in range(num_cols)
            if valid_BxC[b, c]
        ]
        lengths = [len(token_ids[b][c]) for b, c in cells]
        if pack:
            place = best_fit_decreasing(lengths, max_seq_len, max_segments)
        else:  # one text per row, rows in example order; absent columns keep their row empty
            place = [(b % per_device * num_cols + c, 0) for b, c in cells]
        placements.append((cells, place))
        needed = max(needed, 1 + max((r for r, _ in place), default=0))

    if pack:
        sizes = row_sizes(per_device * num_cols, size_multiple)
        rows = next(s for s in sizes if s >= needed)
        length = max_seq_len
    else:
        rows = per_device * num_cols
        longest = max((len(t) for row in token_ids for t in row), default=1)
        length = min((b for b in bucket_lengths if b >= longest), default=max_seq_len)
    ids = np.full((num_devices, rows, length), pad_id, np.int32)
    seg = np.zeros((num_devices, rows, length), np.int32)
    fill = np.zeros((num_devices, rows), np.int32)
    for g, (cells, place) in enumerate(placements):
        for (b, c), (r, s) in zip(cells, place, strict=True):
            t = token_ids[b][c]
            start = fill[g, r]
            ids[g, r, start : start + len(t)] = t
            seg[g, r, start : start + len(t)] = s + 1
            fill[g, r] += len(t)
            row_BxC[b, c], slot_BxC[b, c] = r, s
    return {
        "ids_GRxL": ids.reshape(num_devices * rows, length),
        "segments_GRxL": seg.reshape(num_devices * rows, length),
        "row_BxC": row_BxC,
        "slot_BxC": slot_BxC,
        "valid_BxC": valid_BxC,
        "example_B": np.asarray(order, np.int32),
    }


def device_slice(
    arrays: dict[str, np.ndarray], num_devices: int, first: int, count: int
) -> dict[str, np.ndarray]:
    """The part of `featurize`'s output that belongs to devices [first, first + count)."""
    out = {}
    for key, x in arrays.items():
        per = x.shape[0] // num_devices
        out[key] = x[first * per : (first + count) * per]
    return out


# ----------------------------------------------------------------------------- encoding batches

ENCODE_BUCKET = 16  # padded rows of an encoding call are a multiple of this many tokens long


@dataclasses.dataclass(frozen=True)
class EncodeBatch:
    """One encoder call: texts `index` (positions in the input) at (row, slot) of rows x length."""

    index: np.ndarray  # [n] the texts of this call
    row: np.ndarray  # [n] row of each text
    slot: np.ndarray  # [n] segment of each text in its row (0 for one text per row)
    rows: int  # R of the call (padding rows included)
    length: int  # L of the call
    segments: int  # S of the call: 1 = one text per row, else packed rows


def _call_rows(needed: int, full: int, multiple: int) -> int:
    """Rows of a call that holds `needed` rows: `full`, or for the last, partial call of a
    shape the next power of two (at least 8), so a single query does not pay for a full call."""
    if needed >= full:
        return full
    small = max(8, 1 << (needed - 1).bit_length())
    return min(full, -(-small // multiple) * multiple)


def encode_batches(
    lengths: Sequence[int],
    *,
    max_tokens: int,
    max_length: int,
    pack_length: int = 0,
    max_segments: int = 16,
    row_multiple: int = 1,
) -> list[EncodeBatch]:
    """Encoding calls of at most `max_tokens` token slots each for texts of `lengths` tokens.

    Texts of at most `pack_length // 2` tokens share rows of `pack_length` (best-fit
    decreasing, at most `max_segments` per row); the others, longest first, go one per row,
    padded to a multiple of ENCODE_BUCKET (at most `max_length`), as many rows per call as the
    budget allows. A call's row count depends only on its length (the last call of each kind
    takes the next power of two instead) and divides by `row_multiple` (the devices sharing a
    call), so a run compiles a handful of shapes: one per row length its longest texts need.
    """
    lengths = np.asarray(lengths, np.int64)
    if len(lengths) and int(lengths.max()) > max_length:
        raise ValueError(f"a text of {int(lengths.max())} tokens exceeds max_length {max_length}")

    def full_rows(length: int) -> int:
        return max(row_multiple, max_tokens // length // row_multiple * row_multiple)

    order = np.argsort(-lengths, kind="stable")  # longest first: texts of a call pad alike
    packed = order[lengths[order] <= pack_length // 2] if pack_length else order[:0]
    single = order[: len(order) - len(packed)]
    batches = []
    lo = 0
    while lo < len(single):
        longest = int(lengths[single[lo]])
        length = min(-(-longest // ENCODE_BUCKET) * ENCODE_BUCKET, max_length)
        full = full_rows(length)
        index = single[lo : lo + full]
        rows = _call_rows(len(index), full, row_multiple)
        zeros = np.zeros(len(index), np.int64)
        batches.append(EncodeBatch(index, np.arange(len(index)), zeros, rows, length, 1))
        lo += len(index)
    if len(packed):
        place = np.array(best_fit_decreasing(lengths[packed].tolist(), pack_length, max_segments))
        full = full_rows(pack_length)
        num_rows = int(place[:, 0].max()) + 1
        for first in range(0, num_rows, full):
            mine = (place[:, 0] >= first) & (place[:, 0] < first + full)
            rows = _call_rows(min(full, num_rows - first), full, row_multiple)
            batches.append(
                EncodeBatch(
                    packed[mine],
                    place[mine, 0] - first,
                    place[mine, 1],
                    rows,
                    pack_length,
                    max_segments,
                )
            )
    return batches


def encode_rows(
    batch: EncodeBatch, token_ids: Sequence[Sequence[int]], pad_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """(ids_RxL, segments_RxL) int32 of one encoding call; `token_ids` are all texts' ids."""
    ids_RxL = np.full((batch.rows, batch.length), pad_id, np.int32)
    seg_RxL = np.zeros((batch.rows, batch.length), np.int32)
    fill_R = np.zeros(batch.rows, np.int64)
    for i, r, s in zip(batch.index, batch.row, batch.slot, strict=True):
        t = token_ids[i]
        start = fill_R[r]
        ids_RxL[r, start : start + len(t)] = t
        seg_RxL[r, start : start + len(t)] = s + 1
        fill_R[r] += len(t)
    return ids_RxL, seg_RxL
