"""Sequence data for recurrent models: a long token stream cut for truncated back-propagation through time."""

from __future__ import annotations

import numpy as np

from .data import ArrayDataset


def tbptt_dataset(ids: np.ndarray, batch_size: int, seq_len: int) -> ArrayDataset:
    """Chunks for truncated back-propagation through time, ordered so unshuffled batches continue.

    The stream is cut into ``batch_size`` contiguous rows; example ``i * batch_size + r`` is the
    ``i``-th chunk of ``seq_len`` tokens of row ``r``. Read in order with ``batch_size``
    (no shuffling), batch ``i + 1`` continues each row exactly where batch ``i`` ended, so the
    LSTM carry can be handed from batch to batch. ``x`` is the input chunk, ``y`` the next tokens.

    >>> data = tbptt_dataset(np.arange(21, dtype=np.int32), batch_size=2, seq_len=3)
    >>> data[np.array([0, 1])]["x"].tolist(), data[np.array([2, 3])]["x"].tolist()
    ([[0, 1, 2], [10, 11, 12]], [[3, 4, 5], [13, 14, 15]])
    """
    row_length = (len(ids) - 1) // batch_size
    chunks = row_length // seq_len
    if chunks < 1:
        raise ValueError(
            f"{len(ids)} tokens cannot fill one batch of {batch_size} x {seq_len}: use more text, a smaller "
            "batch_size or a shorter seq_len"
        )
    rows = np.arange(batch_size)[:, None] * row_length
    steps = np.arange(chunks)[None, :] * seq_len
    starts = (rows + steps).T.reshape(-1)  # chunk-major: all rows of chunk 0, then chunk 1, ...
    offsets = starts[:, None] + np.arange(seq_len)[None, :]
    return ArrayDataset(x=ids[offsets], y=ids[offsets + 1])
