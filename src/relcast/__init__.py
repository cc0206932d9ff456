"""relcast: three-stage hybrid stock return forecasting.

Stage1 is a cross-sectional Transformer that learns how stocks relate at each date,
Stage2 an optional residual booster, Stage3 temporal models (TFT, LSTM/GRU, TCN) that
forecast each stock from its own features plus Stage1's relationship features.
"""

from relcast.data.panel import Panel, RelcastDataError

__version__ = "0.1.0"

__all__ = [
    "Panel",
    "RelcastDataError",
    "__version__",
    "load_dataset",
    "read_panel",
    "synthetic_market",
]


def __getattr__(name: str):
    # Lazy: `import relcast` stays cheap (no torch/lightning until a stage is used).
    if name in ("read_panel", "read_universe"):
        from relcast.data import readers

        return getattr(readers, name)
    if name == "load_dataset":
        from relcast.data.datasets import load_dataset

        return load_dataset
    if name == "synthetic_market":
        from relcast.data.synthetic import synthetic_market

        return synthetic_market
    raise AttributeError(f"module 'relcast' has no attribute {name!r}")
