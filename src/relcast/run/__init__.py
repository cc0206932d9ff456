"""Running relcast: the typed run context (:mod:`relcast.run.context`), one function per step
(:mod:`relcast.run.steps`), their order (:mod:`relcast.run.pipeline`), the market a config
names (:mod:`relcast.run.source`) and serving from a finished run (:mod:`relcast.run.inference`)."""
