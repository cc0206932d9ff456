"""The qlib ``Model`` that runs relcast: ``module_path: relcast.qlib_adapter.model``,
``class: RelcastModel`` in a ``qrun`` workflow (``examples/qlib/``). Needs the ``qlib`` extra
(``pip install 'relcast[qlib]'``); everything it does is
:class:`~relcast.qlib_adapter.forecaster.RelcastForecaster`'s."""

from __future__ import annotations

try:
    from qlib.model.base import Model
except ImportError as exc:  # the extra is not installed: say how to get it, do not carry on
    raise ImportError(
        "relcast.qlib_adapter.model needs qlib, which is not installed: "
        "pip install 'relcast[qlib]' (pyqlib 0.9.7)"
    ) from exc

from relcast.qlib_adapter.forecaster import RelcastForecaster


class RelcastModel(RelcastForecaster, Model):
    """relcast as a qlib ``Model``: ``fit(dataset)`` on a ``DatasetH``'s ``train`` and
    ``valid`` segments, ``predict(dataset, segment="test")`` -> ``pd.Series`` of scores on
    qlib's (datetime, instrument) index. Arguments: :class:`RelcastForecaster`'s."""
