"""Tab 2, Settings: a preset plus the key settings; applying them prepares a new run folder
(the market is split into train / valid / test there)."""

from __future__ import annotations

from pathlib import Path

from relcast.app.session import confine_paths, progress_md, user_error
from relcast.app.ui import Shared, friendly
from relcast.config import (
    PRESETS,
    RelcastConfig,
    RelcastConfigError,
)
from relcast.config.stages import EXTRACTORS, FEATURE_SETS
from relcast.runfolder import RunFolder

# Each settings widget and the one config key it sets, in the order settings_values returns
# and settings_overrides reads them.
SETTINGS = {
    "d_model": "stage1.d_model",
    "num_heads": "stage1.num_heads",
    "stage1_epochs": "stage1.max_epochs",
    "horizons": "data.horizons",
    "models": "stage3.models",
    "feature_sets": "stage3.feature_sets",
    "lookback": "stage3.lookback",
    "stage3_epochs": "stage3.max_epochs",
    "extractor": "relationships.extractor",
    "stage2": "stage2.enabled",
    "regime": "relationships.regime",
}


def stage3_model_names() -> list[str]:
    """The Stage3 models the app offers: the registry's (the config accepts the same)."""
    from relcast.models.temporal.registry import available_models

    return available_models()


def settings_values(cfg: RelcastConfig) -> tuple:
    """A config's values for the widgets, in :data:`SETTINGS` order."""
    values = []
    for key in SETTINGS.values():
        value = cfg
        for part in key.split("."):
            value = getattr(value, part)
        values.append(list(value) if isinstance(value, list) else value)
    return tuple(values)


def _yaml_value(value) -> str:
    """A widget's value as ``--set`` text: numbers from number boxes as ints, lists as
    ``[a,b]``, booleans as ``true``/``false``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list | tuple):
        return f"[{','.join(map(str, value))}]"
    return str(value)


def settings_overrides(*values, extra: str = "") -> list[str]:
    """Widget values (in :data:`SETTINGS` order) -> ``key=value`` overrides; the free-text
    lines of ``extra`` come last and win."""
    given = dict(zip(SETTINGS, values, strict=True))
    if not given["models"]:
        raise RelcastConfigError(
            f"choose at least one Stage3 model ({', '.join(stage3_model_names())})"
        )
    if not given["feature_sets"]:
        raise RelcastConfigError("choose at least one Stage3 feature set (hybrid is the design)")
    out = [f"{SETTINGS[name]}={_yaml_value(value)}" for name, value in given.items()]
    for line in (extra or "").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(line)
    # streamed progress needs the progress bar; the CPU is all the app assumes
    return [*out, "trainer.progress=true"]


def prepare(session: dict, preset: str, overrides: list[str]) -> str:
    """Validate the config, create a fresh run folder and split the market into it."""
    from relcast.config import load_config
    from relcast.run.runner import Pipeline

    if not session.get("data"):
        raise user_error("load a market in step 1 first")
    session["run"], session["done"] = None, ["data"]  # a failed apply leaves no stale run
    cfg = load_config(preset, None, [*session["data"], *overrides])
    confine_paths(cfg, session)  # uploads and the session folder only, never a server path
    session["runs"] += 1
    run = Path(session["dir"]) / f"run-{session['runs']:02d}"
    Pipeline(cfg, run).step("prepare")  # bad data or too few dates fail here, before training
    session["run"], session["done"] = str(run), ["data", "settings"]
    split = RunFolder(run).read_json("split.json")
    d = split["dates"]
    s3 = cfg.stage3
    return "\n".join(
        [
            f"Run folder: {run}",
            f"Split (embargo {split['embargo']} dates between spans): train {d['train'][0]} .. "
            f"{d['train'][1]} ({len(split['train'])} dates), valid {d['valid'][0]} .. "
            f"{d['valid'][1]} ({len(split['valid'])}), test {d['test'][0]} .. {d['test'][1]} "
            f"({len(split['test'])})",
            f"Stage1: d_model {cfg.stage1.d_model}, {cfg.stage1.num_heads} heads, "
            f"{cfg.stage1.num_layers} layers, up to {cfg.stage1.max_epochs} epochs; "
            f"Stage2 {'on' if cfg.stage2.enabled else 'off'}; relationships "
            f"{cfg.relationships.extractor} ({cfg.relationships.oof_folds} out-of-fold folds)",
            f"Stage3: {', '.join(s3.models)} on {', '.join(s3.feature_sets)} features, lookback "
            f"{s3.lookback}, horizons 1..{cfg.data.horizons}, up to {s3.max_epochs} epochs",
        ]
    )


def build(shared: Shared) -> None:
    """The tab's widgets and handlers (inside the app's ``gr.Blocks``)."""
    import gradio as gr

    from relcast.config import load_config

    v = dict(zip(SETTINGS, settings_values(load_config("small")), strict=True))

    def number(key: str, label: str, elem_id: str, minimum: int, **kw):
        return gr.Number(v[key], precision=0, minimum=minimum, label=label, elem_id=elem_id, **kw)

    with gr.Tab("2 Settings", id="settings"):
        with gr.Row():
            preset = gr.Dropdown(
                list(PRESETS),
                value="small",
                label="Preset (SPEC.md)",
                elem_id="preset",
            )
            extractor = gr.Dropdown(
                list(EXTRACTORS),
                value=v["extractor"],
                label="Relationship extractor",
                elem_id="extractor",
            )
            stage2 = gr.Checkbox(value=v["stage2"], label="Stage2 residual boost", elem_id="stage2")
            regime = gr.Checkbox(
                value=v["regime"],
                label="Regime gating (needs extractor v1, v3 or v1+v2)",
                elem_id="regime",
            )
        with gr.Row():
            d_model = number("d_model", "Stage1 d_model", "d-model", 8)
            num_heads = number("num_heads", "Stage1 heads", "num-heads", 1)
            stage1_epochs = number("stage1_epochs", "Stage1 max epochs", "stage1-epochs", 1)
            horizons = number("horizons", "Horizons (days)", "horizons", 1, maximum=60)
        with gr.Row():
            models = gr.CheckboxGroup(
                stage3_model_names(),
                value=v["models"],
                label="Stage3 models",
                elem_id="models",
            )
            feature_sets = gr.CheckboxGroup(
                list(FEATURE_SETS),
                value=v["feature_sets"],
                label="Stage3 feature sets (hybrid = own + relationship + calendar)",
                elem_id="feature-sets",
            )
            lookback = number("lookback", "Stage3 lookback", "lookback", 2)
            stage3_epochs = number("stage3_epochs", "Stage3 max epochs", "stage3-epochs", 1)
        extra = gr.Textbox(
            label="More settings: one key=value per line (e.g. "
            "stage3.hidden_size=32); these win over the fields above",
            lines=3,
            elem_id="extra",
        )
        apply_btn = gr.Button(
            "Apply settings and prepare the run", variant="primary", elem_id="apply"
        )
        run_info = gr.Textbox(label="Run", lines=5, interactive=False, elem_id="run-info")

    widgets = [
        d_model,
        num_heads,
        stage1_epochs,
        horizons,
        models,
        feature_sets,
        lookback,
        stage3_epochs,
        extractor,
        stage2,
        regime,
    ]  # in SETTINGS order
    preset.change(lambda name: settings_values(load_config(name)), preset, widgets)

    @friendly
    def on_apply(form: dict):
        # the inputs are given as a set, so Gradio passes one dict: component -> value
        overrides = settings_overrides(*(form[w] for w in widgets), extra=form[extra])
        session = form[shared.state]
        if session is None:
            raise user_error("load a market in step 1 first")
        text = prepare(session, form[preset], overrides)
        return session, text, progress_md(session)

    apply_btn.click(
        on_apply,
        {shared.state, preset, *widgets, extra},
        [shared.state, run_info, shared.progress],
    )
