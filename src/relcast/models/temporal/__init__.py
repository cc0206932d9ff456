"""Stage3 temporal models, picked by name:
:func:`relcast.models.temporal.registry.create_model` ``("tft" | "lstm" | "gru" | "tcn", ...)``.

The contract every model follows (config fields, batch keys, outputs) is written in
:mod:`relcast.models.temporal.registry`. Importing this package registers the models.
"""

from relcast.models.relational import joint, master, rsr, stockmixer  # noqa: F401  (whole-date)
from relcast.models.temporal import lstm, tcn, tft  # noqa: F401  (imports register the models)
