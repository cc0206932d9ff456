"""Write the bundled demo market as a qlib data folder, for qlib's own workflows
(``examples/qlib/``): ``python -m relcast.qlib_adapter.demo_data DIR [--dates N]``.

29 US large caps and the S&P 500 index as ``SPX`` (``relcast.load_dataset("demo")``),
1999-01-04..2013-08-09, in qlib's binary layout (:func:`relcast.data.qlib.write_qlib`):
``instruments/stocks.txt`` is the market of the stocks, ``SPX`` the benchmark. The prices
are adjusted already (``factor`` = 1); the demo has no ``vwap``, so qlib reads that field as
NaN (Alpha158's ``VWAP0`` column is then filled by the handler's ``Fillna``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from relcast.data.datasets import load_dataset
from relcast.data.qlib import write_qlib


def write_demo(folder: str | Path, dates: int | None = None) -> Path:
    """The demo market (its last ``dates`` dates, all if None) as a qlib folder."""
    panel = load_dataset("demo")
    if dates is not None:
        panel = panel.select(start=panel.dates[-int(dates)])
    return write_qlib(panel, Path(folder).expanduser())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="a new folder, e.g. ~/.qlib/qlib_data/relcast_demo")
    parser.add_argument("--dates", type=int, default=None, help="keep only the last N dates")
    args = parser.parse_args(argv)
    print(f"qlib data folder written: {write_demo(args.folder, args.dates)}")


if __name__ == "__main__":
    main()
