"""Run configurations as absl flags and flagfiles: one machinery for every trainer.

A run configuration is a frozen dataclass whose fields are declared with `field` (help text,
optional enum) and typed str, int, float, bool or tuple. `define_flags` makes one absl flag per
field, `from_flags` reads them back into the dataclass, and `to_flagfile_text` writes the
resolved values as a flagfile: trainers save it as `workdir/flags.txt`, so sampling and a
resumed run rebuild exactly the same model and data without the user repeating anything.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

from absl import flags

from clip_ddpm.errors import UserError

FLAGS_FILENAME = "flags.txt"


def field(default: Any, help: str, enum: tuple[str, ...] | None = None) -> Any:
    """A config field whose flag has this default, help text and (optionally) allowed values."""
    metadata = {"help": help, "enum": enum}
    if isinstance(default, tuple):
        return dataclasses.field(default_factory=lambda: default, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def new_default(config_class: type, name: str, default: Any) -> Any:
    """The field `name` of `config_class` with another default, its help text kept: how a
    derived config changes a shared field's default without declaring the field again."""
    metadata = config_class.__dataclass_fields__[name].metadata
    return field(default, metadata["help"], metadata["enum"])


def define_flags(flag_values: flags.FlagValues, config_class: type, prefix: str = "") -> None:
    """Defines one absl flag per field of `config_class` in `flag_values`, named `prefix` + field
    name (a prefix lets one command hold several run configurations, e.g. --clip_num_steps)."""
    for item in dataclasses.fields(config_class):
        help_text, enum = item.metadata["help"], item.metadata["enum"]
        name = prefix + item.name
        default = item.default if item.default is not dataclasses.MISSING else item.default_factory()
        if enum:
            flags.DEFINE_enum(name, default, enum, help_text, flag_values=flag_values)
        elif item.type == "bool":
            flags.DEFINE_bool(name, default, help_text, flag_values=flag_values)
        elif item.type == "int":
            flags.DEFINE_integer(name, default, help_text, flag_values=flag_values)
        elif item.type == "float":
            flags.DEFINE_float(name, default, help_text, flag_values=flag_values)
        elif item.type == "str":
            flags.DEFINE_string(name, default, help_text, flag_values=flag_values)
        else:  # tuples are comma-separated lists
            flags.DEFINE_list(name, [str(v) for v in default], help_text, flag_values=flag_values)


def _convert(item: dataclasses.Field, value: Any) -> Any:
    if item.type == "tuple[int, ...]":
        return tuple(int(v) for v in value)
    if item.type == "tuple[float, ...]":
        return tuple(float(v) for v in value)
    if item.type == "tuple[str, ...]":
        return tuple(str(v).strip() for v in value)
    return value


def from_flags(flag_values: flags.FlagValues, config_class: type, prefix: str = "", **overrides: Any) -> Any:
    """The `config_class` the parsed flags (named `prefix` + field) describe; bad list items are
    a UserError."""
    values = {}
    for item in dataclasses.fields(config_class):
        try:
            values[item.name] = _convert(item, flag_values[prefix + item.name].value)
        except ValueError as error:
            raise UserError(f"--{prefix}{item.name}: {error}") from None
    values.update(overrides)
    return config_class(**values)


def to_flagfile_text(config: Any) -> str:
    """A config dataclass as flagfile lines (`--name=value`), readable by absl's --flagfile."""
    lines = []
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        if isinstance(value, bool):
            lines.append(f"--{item.name}" if value else f"--no{item.name}")
        elif isinstance(value, tuple):
            lines.append(f"--{item.name}={','.join(str(v) for v in value)}")
        else:
            lines.append(f"--{item.name}={value}")
    return "\n".join(lines) + "\n"


def read_flagfile(path: str, config_class: type) -> Any:
    """Parses a flagfile (such as workdir/flags.txt) into a `config_class`, independent of the
    global flags."""
    if not os.path.isfile(path):
        raise UserError(f"no flag file at {path}")
    flag_values = flags.FlagValues()
    define_flags(flag_values, config_class)
    try:
        flag_values(["clip_ddpm", f"--flagfile={path}"], known_only=False)
    except flags.Error as error:
        raise UserError(f"cannot read {path}: {error}") from None
    return from_flags(flag_values, config_class)


def resume_conflicts(saved: Any, requested: Any) -> list[str]:
    """Fields whose values differ between two configs, except those the config class lists in
    RESUMABLE_FIELDS (they change how long or how verbosely a run goes, not what it computes)."""
    resumable = getattr(type(saved), "RESUMABLE_FIELDS", frozenset())
    return [f"--{f.name}: saved {getattr(saved, f.name)!r}, requested {getattr(requested, f.name)!r}"
            for f in dataclasses.fields(saved)
            if f.name not in resumable and getattr(saved, f.name) != getattr(requested, f.name)]
