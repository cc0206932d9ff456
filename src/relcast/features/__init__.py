"""Features, labels and splits: from a :class:`~relcast.data.panel.Panel` to model inputs.

:func:`relcast.features.build.build_features` assembles the
:class:`~relcast.features.featureset.FeatureSet` read by every stage (its blockwise twin for
memory-mapped panels: :mod:`relcast.features.chunked`); labels are
:func:`relcast.features.labels.forward_returns`, chronological splits
:func:`relcast.features.splits.chronological_split`.
"""
