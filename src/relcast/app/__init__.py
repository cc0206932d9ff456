"""The Gradio workflow app: load data, set up a run, train each stage, look at the results.

Start it with ``relcast app`` (needs the extra: ``pip install 'relcast[app]'``). Each browser
session works in its own run folder under a temporary directory, removed when the session
ends. The steps follow the design, one tab each, one module each:

=====================  =====================================================================
module                 what
=====================  =====================================================================
``data_tab``           1 Data: the bundled demo, an uploaded CSV/Parquet or a synthetic market
``settings_tab``       2 Settings: preset + key settings -> overrides; prepares a run folder
``training_tab``       3 Stage1 (+ Stage2), 4 relationship features, 5 Stage3: each runs
                       ``relcast <step>`` in a subprocess, streams its log, can be cancelled
``evaluate_tab``       6 Evaluate: metrics table, attention, importance, predictions, backtest
``run_plots``          the table and plots, drawn from a run folder like the report draws them
``session``            a session's state, step order and subprocesses
``ui``                 Gradio pieces the tabs share (error messages, log boxes, plot slots)
``main``               :func:`build_app` and :func:`launch`
=====================  =====================================================================

Errors the user causes (bad files, bad settings) show as messages, never as tracebacks.
Gradio is imported only inside the functions that build widgets, so everything else here
(and its tests, ``tests/test_app.py``) runs without the extra.
"""
