"""The formats of a run folder's model and relationship files (no pickles anywhere):
weights as safetensors with a JSON sidecar (``<name>.json``: kind, format, config), and
``relationships.npz``. :class:`~relcast.runfolder.RunFolder` reads and writes them."""

from __future__ import annotations

import contextlib
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from relcast.runfolder.base import RUN_FORMAT, RunFolderError, atomic_write, jsonable, read_json


def write_json(path: Path, obj: Any) -> Path:
    import json

    return atomic_write(path, json.dumps(jsonable(obj), indent=2).encode())


def save_module(path: Path, module, config: Any, kind: str, **extra: Any) -> Path:
    """Weights (safetensors) + ``<path>.json`` with the dataclass config, the kind and
    any ``extra`` JSON entries (e.g. how to rebuild a wrapper around the model)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, str(tmp)))
    info = {"kind": kind, "format": RUN_FORMAT, "config": config, **extra}
    write_json(path.with_suffix(".json"), info)
    return path


def load_state(path: Path) -> tuple[dict, dict]:
    """``(state_dict, info)``; info is the JSON written by :func:`save_module`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    info = read_json(path.with_suffix(".json"))
    if not isinstance(info, dict) or info.get("format") != RUN_FORMAT:
        found = info.get("format") if isinstance(info, dict) else type(info).__name__
        raise RunFolderError(
            f"{path.with_suffix('.json')} was not written by this relcast (format {found}, "
            f"this version reads {RUN_FORMAT}); re-run `relcast run` to rebuild it"
        )
    if not path.exists():
        raise RunFolderError(
            f"missing {path} (its {path.with_suffix('.json').name} is there): the weights "
            "were deleted; train them again with the step that writes them"
        )
    try:
        return load_file(str(path)), info
    except (SafetensorError, OSError) as exc:
        raise RunFolderError(
            f"{path} is damaged ({exc}); train it again with the step that writes it"
        ) from None


EXTRACTOR = "extractor.safetensors"


def save_arrays(path: Path, arrays: dict[str, np.ndarray], kind: str, **extra: Any) -> Path:
    """Named arrays (safetensors) + ``<path>.json`` with the kind and ``extra`` entries."""
    from safetensors.numpy import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    atomic_write(path, lambda tmp: save_file(arrays, str(tmp)))
    write_json(path.with_suffix(".json"), {"kind": kind, "format": RUN_FORMAT, **extra})
    return path


def load_arrays(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    """``(arrays, info)`` written by :func:`save_arrays`; a damaged pair is a
    :class:`RunFolderError` naming the file."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(path)
    info = read_json(path.with_suffix(".json"))
    if not isinstance(info, dict) or info.get("format") != RUN_FORMAT:
        raise RunFolderError(
            f"{path.with_suffix('.json')} was not written by this relcast; "
            "run `relcast extract` again"
        )
    try:
        return load_file(str(path)), info
    except (SafetensorError, OSError) as exc:
        raise RunFolderError(f"{path} is damaged ({exc}); run `relcast extract` again") from None


def dataclass_from_dict(cls: type, data: dict) -> Any:
    """Rebuild a config dataclass, turning JSON lists back into tuples where declared."""
    names = {f.name for f in fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key in names:
            kwargs[key] = tuple(value) if isinstance(value, list) else value
    return cls(**kwargs)


RELATIONSHIP_VALUES = "relationships_values.npy"
"""``relationships.npz``'s values as a ``.npy`` beside it (``data.store: memmap``): read as a
memory map, never whole."""


def relationships_npz(names, values, mask, fold_of, dates) -> bytes:
    """The bytes of ``relationships.npz`` (the one place its layout is written): names
    ``[K]``, values ``float32 [T, N, K]`` (None: they are in :data:`RELATIONSHIP_VALUES`
    beside it), mask ``bool [T, N]``, fold_of and dates ``[T]``."""
    import io

    buf = io.BytesIO()
    arrays = {} if values is None else {"values": values}
    np.savez(
        buf,
        names=np.asarray(names),
        **arrays,
        mask=mask,
        fold_of=fold_of,
        dates=np.asarray(dates, dtype="datetime64[ns]").astype("int64"),
    )
    return buf.getvalue()


def read_relationships(path: Path) -> dict[str, Any]:
    """``relationships.npz`` as arrays (``names`` a list of str, ``dates`` datetime64[ns]);
    values from the file itself or, when it has none, memory-mapped (read-only) from
    :data:`RELATIONSHIP_VALUES` beside it; a missing, damaged or inconsistent file is a
    :class:`RunFolderError` naming it."""
    import zipfile

    path = Path(path)
    if not path.exists():
        raise RunFolderError(f"missing {path}: run `relcast extract` first")
    keys = ("names", "mask", "fold_of", "dates")
    beside = path.with_name(RELATIONSHIP_VALUES)
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {k: z[k] for k in keys}
            if "values" in z.files:
                out["values"] = z["values"]
            else:
                out["values"] = np.load(beside, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise RunFolderError(f"{path} is damaged ({exc}); run `relcast extract` again") from None
    T = len(out["dates"])
    shapes_fit = out["values"].shape[:1] == out["fold_of"].shape == (T,)
    if not shapes_fit or out["mask"].shape != out["values"].shape[:2]:
        raise RunFolderError(
            f"{path}: values {out['values'].shape}, mask {out['mask'].shape} and {T} dates "
            "do not fit together; run `relcast extract` again"
        )
    out["names"] = [str(n) for n in out["names"]]
    out["dates"] = out["dates"].astype("datetime64[ns]")
    return out


@contextlib.contextmanager
def rebuilding(path: Path):
    """A model.json edited by hand (wrong keys, sizes) becomes an error naming the file."""
    try:
        yield
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
        raise RunFolderError(
            f"{path.with_suffix('.json')} does not describe the weights in {path.name} "
            f"({type(exc).__name__}: {exc}); restore it, or train the model again"
        ) from None


def load_stage1(path: Path):
    """The Stage1 :class:`CrossSectionalTransformer` saved at ``path``, in eval mode."""
    from relcast.models.cross_sectional import CrossSectionalTransformer, Stage1Config

    state, info = load_state(path)
    with rebuilding(path):
        model = CrossSectionalTransformer(dataclass_from_dict(Stage1Config, info["config"]))
        model.load_state_dict(state)
    return model.eval()


def load_stage3(path: Path):
    """A Stage3 model (registry kind; with its regime gate or rawconcat projection if it had
    one), in eval mode."""
    from relcast.models.temporal.registry import create_model

    state, info = load_state(path)
    if path.parent.name.startswith("stage3_rawconcat_") and "cross_input" not in info:
        raise RunFolderError(
            f"{path} is a rawconcat model saved before its every-stock projection "
            "(an older layout); run `relcast stage3` again to retrain it"
        )
    with rebuilding(path):
        cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in info["config"].items()}
        model = create_model(info["kind"], **cfg)
        if "regime_gate" in info:
            from relcast.models.regime_gate import RegimeGatedModel

            model = RegimeGatedModel(model, **info["regime_gate"])
        if "cross_input" in info:  # rawconcat: the every-stock block's projection
            from relcast.models.temporal.cross_input import CrossSectionInput

            model = CrossSectionInput(model, **info["cross_input"])
        model.load_state_dict(state)
    return model.eval()
