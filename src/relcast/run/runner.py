"""``Pipeline``: one run folder and how to run it: every step in order (:mod:`relcast.run.
pipeline`), or, with ``split.walk_forward``, every test block's run and the pooled scores
(:mod:`relcast.run.walk_forward`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Self

from relcast.config import RelcastConfig, RelcastConfigError
from relcast.run.context import RunContext
from relcast.run.pipeline import run_steps, step
from relcast.run.walk_forward import BLOCKS, is_walk_forward, run_walk_forward


class Pipeline:
    """One run of relcast in one folder: ``run()`` does every step in order, resuming.
    Its data and models are :attr:`ctx`'s (:class:`~relcast.run.context.RunContext`)."""

    def __init__(self, config: RelcastConfig, run_dir: str | Path) -> None:
        self.ctx = RunContext(config, run_dir)

    @classmethod
    def open(cls, run_dir: str | Path) -> Self:
        """An existing run folder, with the configuration it was run with."""
        pipe = cls.__new__(cls)
        pipe.ctx = RunContext.open(run_dir)
        return pipe

    @property
    def config(self) -> RelcastConfig:
        return self.ctx.config

    @property
    def dir(self) -> Path:
        return self.ctx.dir

    def step(self, name: str, **kwargs: Any) -> Any:
        """Run one step now (holding the run folder's lock), whether done or not."""
        if is_walk_forward(self.config):
            raise RelcastConfigError(
                f"{self.dir} is a walk-forward run folder: run a step on one of its blocks "
                f"(--run {self.dir / BLOCKS}/<name>), or `relcast run` for every block"
            )
        return step(name).run(self.ctx, **kwargs)

    def run(self, *, force: bool = False) -> dict:
        """Every step in order (every block's, with ``split.walk_forward``); steps already
        done are skipped unless ``force``."""
        if is_walk_forward(self.config):
            return run_walk_forward(self.config, self.dir, force=force)
        return run_steps(self.ctx, force=force)
