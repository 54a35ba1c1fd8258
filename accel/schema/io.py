"""Reading and writing configs as JSON or YAML, with errors that name the file, field, value and fix."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from accel.errors import ProfileError

M = TypeVar("M", bound=BaseModel)


def format_validation_error(error: ValidationError, source: str) -> str:
    """One line per problem: `source: field.path: got VALUE: what is allowed`."""
    lines = []
    for item in error.errors():
        loc = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field; check its spelling against `sage infer profile show fp16`"
        value = item.get("input")
        shown = "" if isinstance(value, dict) else f" got {value!r}:"
        lines.append(f"{source}: {loc}:{shown} {message}")
    return "\n".join(lines)


def read_document(path: Path) -> dict[str, Any]:
    """Parse a .json, .yaml or .yml file into a mapping; anything else is a ProfileError."""
    if not path.is_file():
        raise ProfileError(f"{path}: no such file; pass a .yaml or .json profile or a preset name")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        else:
            raise ProfileError(f"{path}: unknown profile format {path.suffix!r}; use .json, .yaml or .yml")
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ProfileError(f"{path}: not valid {path.suffix.lstrip('.').upper()}: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: the top level must be a mapping of fields, got {type(data).__name__}")
    return data


def validate(model: type[M], data: dict[str, Any], source: str) -> M:
    """model.model_validate with our error format."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ProfileError(format_validation_error(exc, source)) from None


def dumps(model: BaseModel, fmt: str = "yaml") -> str:
    """Serialise to 'yaml' or 'json' text; loading it back gives an equal model."""
    data = model.model_dump(mode="json")
    if fmt == "json":
        return json.dumps(data, indent=2, sort_keys=False) + "\n"
    if fmt == "yaml":
        return yaml.safe_dump(data, sort_keys=False)
    raise ValueError(f"unknown format {fmt!r}; use 'yaml' or 'json'")


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
