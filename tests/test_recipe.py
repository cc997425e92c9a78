"""The recipe schema: every mistake is one line naming the field, and exit code 2."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from ftexport.cli import main
from ftexport.core.errors import RecipeError
from ftexport.recipe import load_recipe, parse_recipe


def test_valid_recipe_loads_with_defaults(recipe_file):
    r = load_recipe(recipe_file())
    assert r.name == "tiny"
    assert r.training.scheduler == "linear"
    assert r.quantize.per_channel is True
    assert r.validate_.fp32.max_logit_diff == 1e-3


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"training__lr": "fast"}, "recipe.training.lr: expected a number, got 'fast'"),
        ({"training__batch_size": 2.5}, "recipe.training.batch_size: expected an integer, got 2.5 (float)"),
        ({"training__lrr": 0.1}, "recipe.training.lrr: unknown key; did you mean 'lr'?"),
        (
            {"method__name": "qlora"},
            "recipe.method.name: expected one of 'full', 'bitfit', 'lora', 'adalora', 'ia3', 'prefix', 'prompt' or 'none', "
            "got 'qlora'; did you mean 'lora'?",
        ),
        ({"training__batch_size": 0}, "recipe.training.batch_size: input should be greater than 0, got 0 (int)"),
        (
            {"validate__int8__min_agreement": 1.5},
            "recipe.validate.int8.min_agreement: input should be less than or equal to 1, got 1.5 (float)",
        ),
        ({"quantize__per_channel": "maybe"}, "recipe.quantize.per_channel: expected true or false, got 'maybe'"),
        ({"bench__batch_sizes": [1, -8]}, "recipe.bench.batch_sizes: expected a non-empty list of positive sizes, got [1, -8]"),
    ],
)
def test_bad_field_is_one_line_naming_it(recipe_file, overrides, message):
    with pytest.raises(RecipeError) as e:
        load_recipe(recipe_file(**overrides))
    assert str(e.value) == message


def test_unknown_top_level_key(recipe_file):
    with pytest.raises(RecipeError, match=r"^recipe\.trainnig: unknown key; did you mean 'training'\?$"):
        load_recipe(recipe_file(trainnig={"lr": 1}))


def test_missing_required_section():
    with pytest.raises(RecipeError, match=r"^recipe\.model: required field is missing"):
        parse_recipe({"name": "x", "data": {"train": "a.csv", "test": "b.csv"}})


def test_missing_data_file_names_the_field(recipe_file):
    with pytest.raises(RecipeError, match=r"^recipe\.data\.train: .*nope\.csv does not exist$"):
        load_recipe(recipe_file(data__train="nope.csv"))


def test_missing_model_path(recipe_file, tmp_path):
    with pytest.raises(RecipeError, match=r"^recipe\.model\.path: .*absent does not exist$"):
        load_recipe(recipe_file(model__path=str(tmp_path / "absent")))


def test_package_model_path_names_pip_package(recipe_file):
    with pytest.raises(RecipeError, match=r"pip install no-such-weights-pkg$"):
        load_recipe(recipe_file(model__path="package:no_such_weights_pkg/model"))


def test_env_var_expansion(recipe_file, monkeypatch, tmp_path):
    path = recipe_file()
    text = path.read_text().replace(str(tmp_path / "data"), "${MY_DATA_ROOT}")
    path.write_text(text)
    monkeypatch.delenv("MY_DATA_ROOT", raising=False)
    with pytest.raises(RecipeError, match=r"^recipe\.data\.root: environment variable MY_DATA_ROOT is not set"):
        load_recipe(path)
    monkeypatch.setenv("MY_DATA_ROOT", str(tmp_path / "data"))
    assert load_recipe(path).data.root == str(tmp_path / "data")


def test_invalid_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntraining: [unclosed\n")
    with pytest.raises(RecipeError, match=r"not valid YAML at line"):
        load_recipe(bad)


def test_a_recipe_that_is_not_text_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "model.yaml"
    bad.write_bytes(b"name: x\n\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(RecipeError, match=r"model\.yaml: not a UTF-8 text file \(byte 8 cannot be read\)"):
        load_recipe(bad)
    result = CliRunner().invoke(main, ["train", str(bad)])
    assert result.exit_code == 2 and "not a UTF-8 text file" in result.output and "Traceback" not in result.output


def test_cli_reports_one_line_and_exit_2(recipe_file):
    path = recipe_file(training__lr="fast")
    result = CliRunner().invoke(main, ["run", str(path)])
    assert result.exit_code == 2
    assert result.output.strip() == "error: recipe.training.lr: expected a number, got 'fast'"


def test_set_overrides_change_the_recipe_not_the_file(recipe_file):
    """--set SECTION.FIELD=VALUE: VALUE read as YAML, a section the file lacks made on the way,
    every field not named keeps the file's value, and the file is left as it was."""
    path = recipe_file()
    before = path.read_text()
    sets = ["training.lr=5e-5", "bench.batch_sizes=[1, 8]", "data.max_eval_samples=7", "tensorrt.batch=[1, 2, 4]", "method.name=full"]
    r = load_recipe(path, overrides=sets)
    changed = (r.training.lr, r.bench.batch_sizes, r.data.max_eval_samples, r.tensorrt.batch, r.method.name)
    assert changed == (5e-5, [1, 8], 7, (1, 2, 4), "full")
    assert (r.training.epochs, r.name, r.data.label_names) == (8, "tiny", ["negative", "positive"])
    assert load_recipe(path, overrides=["data.max_eval_samples=null"]).data.max_eval_samples is None
    assert path.read_text() == before


@pytest.mark.parametrize(
    "item, message",
    [
        ("training.lrr=0.1", "recipe.training.lrr: unknown key; did you mean 'lr'?"),
        ("training.lr=fast", "recipe.training.lr: expected a number, got 'fast'"),
        ("training.lr", "--set training.lr: expected SECTION.FIELD=VALUE, e.g. --set training.lr=5e-5 or --set distill.seeds=[43]"),
        ("training..lr=1", "--set training..lr=1: expected SECTION.FIELD=VALUE, e.g. --set training.lr=5e-5 or --set distill.seeds=[43]"),
        ("name.x=1", "--set name.x=1: recipe.name is not a section, so it has no field 'x'"),
        (
            "bench.batch_sizes=[1,",
            "--set bench.batch_sizes=[1,: the value is not valid YAML (expected the node content, but found '<stream end>'); quote it",
        ),
    ],
)
def test_a_bad_set_is_one_line_naming_it(recipe_file, item, message):
    with pytest.raises(RecipeError) as e:
        load_recipe(recipe_file(), overrides=[item])
    assert str(e.value) == message


def test_cli_set_reaches_the_stage_and_a_bad_one_exits_2(recipe_file, tmp_path):
    path = recipe_file()
    result = CliRunner().invoke(main, ["-q", "train", str(path), "--set", f"output={tmp_path / 'other'}", "--set", "training.epochs=1"])
    assert result.exit_code == 0, result.output
    assert "(12 steps)" in result.output  # 192 rows, batch 16, one epoch instead of the file's 8
    assert (tmp_path / "other" / "train").is_dir() and not (tmp_path / "runs").exists()
    result = CliRunner().invoke(main, ["run", str(path), "--set", "training.lrr=0.1"])
    assert result.exit_code == 2 and result.output.strip() == "error: recipe.training.lrr: unknown key; did you mean 'lr'?"
    result = CliRunner().invoke(main, ["bench", str(tmp_path), "--set", "bench.iterations=3"])  # no recipe to change
    assert result.exit_code == 2 and "--set changes a recipe's fields; give the recipe too" in result.output


@pytest.mark.parametrize(
    "shipped", sorted((__import__("pathlib").Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml")), ids=lambda p: p.name
)
def test_every_shipped_recipe_parses(shipped, monkeypatch, tmp_path):
    """The schema accepts each recipe as shipped (its files are checked where they run)."""
    import yaml

    monkeypatch.setenv("FTEXPORT_DATA", str(tmp_path))
    r = parse_recipe(yaml.safe_load(shipped.read_text()))
    assert r.name == shipped.stem  # runs/NAME/ is where `ftexport run recipes/NAME.yaml` writes
