"""One module per step of a run, each a function of a :class:`~relcast.run.context.RunContext`:
prepare -> stage1 -> stage2 -> extract -> stage3 -> evaluate -> report. The order, resume and
the DDP policy are :mod:`relcast.run.pipeline`'s."""
