"""The field's relational models as Stage3 registry models: they read a whole date at once.

StockMixer (Fan and Shen, AAAI 2024), an RSR-style relational LSTM (Feng et al., TOIS 2019)
and MASTER (Li et al., AAAI 2024), written from the papers' descriptions. They register in
the Stage3 registry (:mod:`relcast.models.temporal.registry`) with the class attribute
``cross_section = True`` and are trained and predicted by
:mod:`relcast.training.cross_section_stage3`, on the same inputs, labels and splits as the
other Stage3 models.

Cross-section batch (``forward(batch) -> {"pred": ...}``)
    - ``x``: float ``[D, N, L, F]``, the window of ``lookback`` dates ending at each of D
      dates, for every stock of the universe (oldest first; zeros where ``mask`` is False);
    - ``mask``: bool ``[D, N]``, the stock has a complete window ending at the date. Masked
      stocks take no part in any mixing across stocks (their inputs can be anything);
    - ``sector_id``: long ``[N]``, each stock's industry, -1 for none (no relation);
    - ``stock_id``: long ``[N]``.
Output ``pred``: ``[D, N, H, Q]`` (meaningless where ``mask`` is False).
Their ``Config`` adds ``rank_weight``: the weight of the pairwise hinge ranking term the
training adds to the pinball / squared loss (StockMixer and RSR: MSE + alpha x hinge).
"""

# the temporal package imports (registers) the three models: import it first, so that
# importing one of them directly finds the registry ready and no half-built module
import relcast.models.temporal  # noqa: E402, F401
