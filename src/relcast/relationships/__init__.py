"""Relationship features of every (date, stock), extracted once from Stage1: the store and its
builder (:mod:`relcast.relationships.store`), its out-of-fold folds and Procrustes alignment
(:mod:`relcast.relationships.folds`) and its block-by-block extraction for the memory-mapped
mode (:mod:`relcast.relationships.blocks`)."""
