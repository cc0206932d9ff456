"""The folds of the out-of-fold relationship store (:mod:`relcast.relationships.store`): purged,
embargoed, time-ordered folds of the training span, the dates a training date's label window
reads, the Procrustes rotation that aligns a fold model's learned-embedding blocks onto the full
model's basis, and the epoch count fold models train for."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Column prefixes of learned embedding blocks whose basis differs between models.
ALIGNABLE_PREFIXES = ("rel_emb_", "ctr_", "lso_", "orth_rel_emb_", "orth_ctr_", "orth_lso_")
NOT_ALIGNABLE_PREFIXES = ("ctr_sim_", "orth_ctr_sim_")


def purged_folds(
    train_index: np.ndarray, n_folds: int, embargo: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``[(fit_index, fold_index), ...]``: contiguous time-ordered folds of ``train_index``.

    ``fold_index`` is the k-th contiguous chunk; ``fit_index`` is the rest of the training
    span minus the dates within ``embargo`` of the fold on either side (purge + embargo).
    """
    train_index = np.sort(np.asarray(train_index, dtype=np.int64))
    if n_folds < 2:
        raise ValueError(f"out-of-fold extraction needs n_folds >= 2, got {n_folds}")
    if len(train_index) < n_folds:
        raise ValueError(f"{len(train_index)} training dates cannot make {n_folds} folds")
    out = []
    for fold in np.array_split(train_index, n_folds):
        lo, hi = fold[0] - embargo, fold[-1] + embargo
        fit = train_index[(train_index < lo) | (train_index > hi)]
        out.append((fit, fold))
    return out


def alignable_blocks(names: Sequence[str]) -> list[np.ndarray]:
    blocks = []
    for prefix in ALIGNABLE_PREFIXES:
        cols = [
            i
            for i, n in enumerate(names)
            if n.startswith(prefix) and not n.startswith(NOT_ALIGNABLE_PREFIXES)
        ]
        if len(cols) > 1:
            blocks.append(np.array(cols))
    return blocks


def procrustes_rotation(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Orthogonal ``R [K, K]`` minimising ``||source @ R - target||`` (rows = samples)."""
    u, _, vt = np.linalg.svd(source.T.astype(np.float64) @ target.astype(np.float64))
    return u @ vt


def best_epoch_count(history: Sequence[dict[str, float]], monitor: str = "val_rank_ic") -> int:
    """Epochs up to and including the best ``monitor`` value of a ``fit_stage1`` history (the
    ``fold_epochs`` that matches the full model); 0 if it was never logged."""
    scores = np.array([h.get(monitor, np.nan) for h in history], dtype=np.float64)
    if not np.isfinite(scores).any():
        return 0
    return int(np.nanargmax(scores)) + 1  # the first best, as the checkpoint keeps it


def label_dates_used(train_index: np.ndarray, horizons: int, num_dates: int) -> np.ndarray:
    """``bool [T]``: dates inside the label window ``s .. s + horizons`` of a training date s."""
    used = np.zeros(num_dates + horizons + 1, dtype=bool)
    s = np.asarray(train_index, dtype=np.int64)
    for h in range(horizons + 1):  # H + 1 shifted copies, not a loop over dates
        used[s + h] = True
    return used[:num_dates]


def log_fold(k: int, n_folds: int, record: dict, elapsed: float) -> None:
    """One log line when out-of-fold fold ``k`` (0-based) is trained and extracted:
    ``elapsed`` seconds since the first fold began, the rest estimated at the mean so far."""
    from relcast.progress import format_duration, is_rank_zero, log_line

    if not is_rank_zero():
        return
    done = k + 1
    left = (n_folds - done) * elapsed / done
    log_line(
        f"out-of-fold fold {done}/{n_folds} done: Stage1 trained on "
        f"{len(record['train_index']):,} dates, {record['epochs']} epochs in "
        f"{format_duration(record['train_seconds'])}; {format_duration(elapsed)} for the folds "
        f"so far, ~{format_duration(left)} left"
    )
