import re
from pathlib import Path

import pytest

from relcast.config import PRESET_DIR, PRESETS, RelcastConfigError, load_config


@pytest.mark.parametrize("preset", PRESETS)
def test_every_shipped_preset_loads(preset):
    cfg = load_config(preset)
    assert cfg.preset == preset
    assert cfg.stage1.d_model % cfg.stage1.num_heads == 0
    assert sorted(p.stem for p in PRESET_DIR.glob("*.yaml")) == sorted(PRESETS)


def test_presets_follow_the_spec_table():
    small, medium, large = (load_config(p) for p in PRESETS)
    assert (small.stage1.d_model, small.stage1.num_heads, small.stage1.num_layers) == (64, 4, 2)
    assert (medium.stage1.d_model, medium.stage1.num_heads, medium.stage1.num_layers) == (128, 8, 3)
    assert (large.stage1.d_model, large.stage1.num_heads, large.stage1.num_layers) == (256, 8, 4)
    assert small.stage1.relationship_dim == 16 and medium.stage1.relationship_dim == 32
    assert large.relationships.extractor == "v1+v2" and large.stage3.models == ["tcn"]
    assert medium.stage3.models == ["tft"] and medium.stage3.lookback == 90


def test_file_then_overrides_win(tmp_path: Path):
    f = tmp_path / "run.yaml"
    f.write_text("preset: medium\nstage3:\n  lookback: 30\n  models: [lstm]\n")
    cfg = load_config(file=f, overrides=["stage3.lookback=20", "trainer.seed=7"])
    assert cfg.preset == "medium" and cfg.stage1.d_model == 128
    assert cfg.stage3.lookback == 20 and cfg.stage3.models == ["lstm"] and cfg.trainer.seed == 7


@pytest.mark.parametrize(
    "override, expected",
    [
        ("stage1.dmodel=3", "stage1.dmodel: unknown key (allowed here: d_model"),
        (
            "stage3.models=[xgb]",
            "registered: ['gru', 'joint', 'lstm', 'master', 'rsr', 'stockmixer', 'tcn', 'tft']",
        ),
        ("relationships.extractor=v9", "relationships.extractor"),
        ("split.embargo=1", "must be >= data.horizons"),
        ("stage1.num_heads=5", "divisible"),
        ("stage3.quantiles=[0.9,0.1]", "increasing"),
        ("nonsense", "key=value"),
        ("relationships.regime=true", "use relationships.extractor=v1, v3 or v1+v2"),
    ],
)
def test_bad_values_name_the_key(override, expected):
    with pytest.raises(RelcastConfigError, match=None) as info:
        load_config("small", overrides=[override])
    assert expected in str(info.value)


def test_bad_preset_and_missing_file(tmp_path):
    with pytest.raises(RelcastConfigError, match="preset must be one of"):
        load_config("huge")
    with pytest.raises(RelcastConfigError, match="not found"):
        load_config(file=tmp_path / "nope.yaml")


def test_yaml_round_trip(tmp_path):
    cfg = load_config("large", overrides=["stage3.quantiles=null"])
    f = tmp_path / "config.yaml"
    f.write_text(cfg.to_yaml())
    assert load_config(file=f) == cfg


def test_baseline_models_limit_the_comparisons(tmp_path):
    from relcast.run.runner import Pipeline

    cfg = load_config(
        "small",
        overrides=["stage3.models=[gru,tft]", "stage3.feature_sets=[hybrid,own,rawconcat]",
                   "stage3.baseline_models=[gru]"],
    )  # fmt: skip
    names = [n for n, _, _ in Pipeline(cfg, tmp_path).ctx.stage3_names()]
    assert names == ["hybrid_gru", "stage3_own_gru", "stage3_rawconcat_gru", "hybrid_tft"]


def test_dates_from_yaml_or_set_stay_text(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("data:\n  start: 2004-01-01\n")
    assert load_config(file=f).data.start == "2004-01-01"
    assert load_config(overrides=["data.end=2010-06-30"]).data.end == "2010-06-30"


@pytest.mark.parametrize(
    "override, expected",
    [
        ("trainer.accelerator=gpux", "trainer.accelerator"),
        ("trainer.strategy=dpp", "unknown strategy 'dpp'"),
        ("trainer.devices=0", "trainer.devices"),
        ("trainer.devices=two", "device ids like '0,1'"),
        ("stage3.models=[]", "stage3.models"),
        ("stage3.feature_sets=[]", "stage3.feature_sets"),
        ("stage1.max_epochs=true", "stage1.max_epochs"),  # strict: a bool is not 1
        ("stage3.lookback=8.5", "stage3.lookback"),
        ("stage3.models=[gru", "--set stage3.models: the value '[gru' is not valid YAML"),
    ],
)
def test_mistakes_are_config_errors_naming_the_key(override, expected):
    with pytest.raises(RelcastConfigError) as info:
        load_config("small", overrides=[override])
    assert expected in str(info.value)


@pytest.mark.parametrize(
    "override", ["trainer.devices=auto", "trainer.devices=-1", "trainer.devices='0,1'",
                 "trainer.strategy=ddp_spawn", "stage1.lr=1", "data.source=2020"]
)  # fmt: skip
def test_valid_trainer_and_numbers_still_load(override):
    load_config("small", overrides=[override])


def test_order_defaults_preset_file_set_values(tmp_path: Path):
    """The file's data.source holds unless a --set or an explicit CLI flag names another."""
    f = tmp_path / "run.yaml"
    f.write_text("preset: medium\ndata:\n  source: mine.csv\n  horizons: 3\n")
    assert load_config(file=f).data.source == "mine.csv"
    cfg = load_config(file=f, overrides=["data.source=other.csv"])
    assert cfg.data.source == "other.csv" and cfg.data.horizons == 3
    cfg = load_config(file=f, overrides=["data.source=other.csv"], values={"data.source": "x"})
    assert cfg.data.source == "x" and cfg.stage1.d_model == 128


def test_literal_values_are_not_yaml():
    """A CLI path is a path: '#' would start a YAML comment, ': ' a mapping."""
    for path in ("prices #2.csv", "a: b.csv", "[x].csv", "true"):
        assert load_config(values={"data.source": path}).data.source == path


def test_scientific_numbers_are_numbers(tmp_path: Path):
    """Strict types must not refuse `1e-3` (PyYAML's YAML 1.1 reads it as text)."""
    assert load_config(overrides=["stage1.lr=1e-3"]).stage1.lr == pytest.approx(1e-3)
    f = tmp_path / "run.yaml"
    f.write_text("stage3:\n  lr: 5E-4\nevaluation:\n  buy_cost: 2.5e-4\n")
    cfg = load_config(file=f)
    assert cfg.stage3.lr == pytest.approx(5e-4) and cfg.evaluation.buy_cost == pytest.approx(2.5e-4)


# ------------------------------------------------------- one word per idea, old keys refused
@pytest.mark.parametrize(
    "old, new",
    [
        ("stage1.n_heads=2", "stage1.num_heads"),
        ("stage1.n_layers=1", "stage1.num_layers"),
        ("stage3.heads=2", "stage3.tft.num_heads"),
        ("stage3.num_layers=1", "stage3.gru.num_layers"),
    ],
)
def test_old_keys_name_the_new_one(old, new, tmp_path):
    with pytest.raises(RelcastConfigError, match="was renamed: write " + re.escape(new)):
        load_config("small", overrides=[old])
    section, rest = old.split(".", 1)
    key, value = rest.split("=")
    f = tmp_path / "old.yaml"
    f.write_text(f"{section}:\n  {key}: {value}\n")
    with pytest.raises(RelcastConfigError, match=re.escape(new)):
        load_config(file=f)


def test_no_shipped_text_uses_the_old_keys():
    """Presets, README and docs speak num_heads / num_layers only."""
    root = Path(__file__).parents[1]
    texts = [*PRESET_DIR.glob("*.yaml"), root / "README.md", *(root / "docs").glob("*.md")]
    for path in texts:
        text = path.read_text()
        for old in ("n_heads", "n_layers", "stage3.heads", "stage3.num_layers"):
            assert old not in text, f"{path.name} still says {old}"


# ------------------------------------------------------- the registry names the models
def test_per_model_sections_reach_the_model_config():
    cfg = load_config(
        "small",
        overrides=["stage3.models=[gru,tft,tcn]", "stage3.gru.num_layers=3",
                   "stage3.tft.num_heads=8", "stage3.tcn.kernel_size=5", "stage3.dropout=0.2"],
    )  # fmt: skip
    assert cfg.stage3.hparams("gru") == {"hidden_size": 64, "dropout": 0.2, "num_layers": 3}
    tft = cfg.stage3.hparams("tft")
    assert tft["num_heads"] == 8 and tft["lstm_layers"] == 1  # defaults from TFTConfig
    assert cfg.stage3.hparams("tcn")["kernel_size"] == 5


@pytest.mark.parametrize(
    "override, expected",
    [
        ("stage3.tft.heads=2", "stage3.tft.heads: unknown key (allowed here: num_heads"),
        ("stage3.gru.num_layers=true", "stage3.gru.num_layers: expected int"),
        ("stage3.tft.num_heads=5", "hidden_size (64) must be divisible by num_heads (5)"),
        ("stage3.tcn.num_levels=2", "use num_levels >= 4"),
        ("stage3.hiden_size=8", "unknown key 'hiden_size'"),
        ("stage3.gru=2", "stage3.gru is the section of gru's hyperparameters"),
    ],
)
def test_model_section_mistakes_name_the_key(override, expected):
    with pytest.raises(RelcastConfigError) as info:
        load_config("small", overrides=[override])
    assert expected in str(info.value)


def test_a_registered_model_is_accepted_everywhere():
    """Adding a model = its file + one line: the config and the app take it from the registry."""
    from dataclasses import dataclass

    from torch import nn

    from relcast.app.settings_tab import stage3_model_names
    from relcast.models.temporal import registry

    @dataclass
    class DummyConfig(registry.TemporalConfig):
        width: int = 3

    with pytest.raises(RelcastConfigError, match="unknown Stage3 model"):
        load_config("small", overrides=["stage3.models=[dummy]"])
    registry.register_model("dummy")(type("Dummy", (nn.Module,), {"Config": DummyConfig}))
    try:
        cfg = load_config("small", overrides=["stage3.models=[dummy]", "stage3.dummy.width=5"])
        assert cfg.stage3.hparams("dummy") == {"hidden_size": 64, "dropout": 0.1, "width": 5}
        assert "dummy" in stage3_model_names()
        with pytest.raises(RelcastConfigError, match="stage3.dummy.depth: unknown key"):
            load_config("small", overrides=["stage3.models=[dummy]", "stage3.dummy.depth=1"])
    finally:
        registry._REGISTRY.pop("dummy")


# ------------------------------------------------------- every documented setting is reachable
def test_settings_reach_stage1_and_the_extractors(tmp_path):
    from relcast.models.cross_sectional import Stage1Config
    from relcast.run.runner import Pipeline
    from relcast.training.specs import ExtractorSpec

    cfg = load_config(
        overrides=["data.source=synthetic", "data.synthetic_stocks=6", "data.synthetic_days=200",
                   "data.label_delay=1", "trainer.seed=3", "relationships.extractor=v3",
                   "relationships.v3.top_k=2", "relationships.v3.positives=corr",
                   "relationships.v3.hidden_size=16", "relationships.v3.steps=7",
                   "stage1.dim_feedforward=40", "stage1.sector_weight=0.5"],
    )  # fmt: skip
    pipe = Pipeline(cfg, tmp_path / "run")
    pipe.step("prepare")
    ext = pipe.ctx.make_extractor()
    s = ext.settings
    assert (s.top_k, s.positives, s.hidden_size, s.steps) == (2, "corr", 16, 7)
    assert (ext.label_delay, s.seed) == (1, 3)
    stage1 = Stage1Config.from_settings(cfg.stage1, num_features=4, num_stocks=6)
    assert (stage1.dim_feedforward, stage1.sector_weight) == (40, 0.5)
    pca = load_config(overrides=["relationships.v2.method=pca"])
    v2 = pipe.ctx.make_extractor(ExtractorSpec.from_config(pca))
    assert (v2.method, v2.n_components) == ("pca", 16)


def test_the_reports_config_summary_reads_keys_that_exist():
    """The report's summary names config keys by path: each must be a key of the config."""
    from relcast.evaluation.report_html import _CONFIG_SUMMARY

    dumped = load_config("small").model_dump(mode="json")
    for label, *paths in _CONFIG_SUMMARY:
        for path in paths:
            node = dumped
            for key in path[:-1]:
                node = node[key]
            assert path[-1] in node, f"report row {label!r} reads {'.'.join(path)}"


@pytest.mark.parametrize(
    "content",
    [
        "data:\n  source: pr\xe9ces.csv\n".encode("latin-1"),  # not UTF-8
        b"split:\n  train_end: 2024-02-30\n",  # no such date
        b"data:\n  date_format: '%Q'\n",  # no such strftime directive
        b"split:\n  valid_end: 2024-13-01\n",
    ],
    ids=["latin-1 file", "invalid date", "bad strftime", "month 13"],
)
def test_bad_config_inputs_exit_2_without_a_traceback(content, tmp_path):
    # issue #27: every config input a user can get wrong is a user error (exit 2)
    from typer.testing import CliRunner

    from relcast.cli import app

    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    result = CliRunner().invoke(app, ["check", "--data", "demo", "--config", str(path)])
    assert result.exit_code == 2, (result.output, result.exception)
    assert str(path) in result.output or "strftime" in result.output
