"""relcast inside qlib: a qlib ``Model`` (:class:`relcast.qlib_adapter.model.RelcastModel`)
that runs relcast's stages on a qlib ``DatasetH``, so a ``qrun`` workflow trains relcast beside
qlib's own models and scores it with qlib's records (``examples/qlib/``).

The adapter sits above the pipeline's floors: it gathers qlib's frames into relcast's arrays
(:mod:`~relcast.qlib_adapter.frames`) and calls the same fit functions as
:func:`relcast.run.pipeline.run_steps` (:mod:`~relcast.qlib_adapter.forecaster`). Only
:mod:`~relcast.qlib_adapter.model` imports qlib (``pip install 'relcast[qlib]'``).
"""
