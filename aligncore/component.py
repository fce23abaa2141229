"""What every component (branch, builder, fusion) shares: a name, help, a typed config and presets."""

from __future__ import annotations

import difflib
from typing import Any, ClassVar, Iterable

from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import ConfigError

#: preset keys that are not config fields: ``"weights": "random"`` marks a preset whose model has random weights
RESERVED_PRESET_KEYS = frozenset({"weights"})


class ComponentConfig(BaseModel):
    """Base of every component config: unknown fields are errors, not silently ignored, and a float is
    finite (NaN or inf in a config or a fitted state is an error, never a silent "real")."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), validate_assignment=True, allow_inf_nan=False)


def close_matches(word: str, known: Iterable[str]) -> list[str]:
    """The known names closest to ``word`` (at most three)."""
    return difflib.get_close_matches(word, sorted(known), n=3, cutoff=0.5)


def did_you_mean(word: str, known: Iterable[str]) -> str:
    """`` Did you mean 'x'?`` for the closest known names (empty when nothing is close)."""
    close = close_matches(word, known)
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def format_validation_error(owner: str, err: ValidationError, fields: Iterable[str] = ()) -> str:
    """One line per invalid field; an unknown field also gets the closest known names."""
    known = list(fields)
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(config)"
        close = close_matches(str(e["loc"][-1]), known) if e["type"] == "extra_forbidden" and e["loc"] else []
        hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
        msg = str(e["msg"]).removeprefix("Value error, ")  # a validator's own sentence reads better without it
        parts.append(f"{loc}: {msg}{hint}")
    text = "; ".join(parts)
    return f"Invalid configuration for {owner}: " + text + ("" if text.endswith((".", "?")) else ".")  # no "x.."


def explicit_values(config: ComponentConfig | dict | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """The values a caller set: a dict as given, a config object's explicitly set fields, then ``overrides``."""
    if isinstance(config, ComponentConfig):
        data = config.model_dump(exclude_unset=True)
    else:
        data = dict(config or {})
    data.update(overrides)
    return data


class Component:
    """Mixin: ``name``, one-line ``help``, a pydantic ``config_class`` and named ``presets``.

    ``presets`` maps a preset name to field values (e.g. ``{"tiny": {"width": 8}}``). When a
    config sets ``preset``, the base checks the name and fills the fields the caller left
    unset from it; the caller's own values always win. A config object remembers only the
    caller's values as "set" (``model_fields_set``), so rebuilding a component from its
    config gives the same result.
    """

    name: ClassVar[str] = ""
    help: ClassVar[str] = ""
    config_class: ClassVar[type[ComponentConfig]] = ComponentConfig
    presets: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(self, config: ComponentConfig | dict | None = None, **overrides: Any):
        self.config = self.make_config(config, **overrides)

    @classmethod
    def make_config(cls, config: ComponentConfig | dict | None = None, **overrides: Any):
        return cls.validate_config(explicit_values(config, overrides))

    @classmethod
    def validate_config(cls, data: dict[str, Any]):
        """Validate ``data`` (the set values) after filling unset fields from the preset it names."""
        full = {**cls.preset_values(data.get("preset")), **data}
        try:
            cfg = cls.config_class(**full)
        except ValidationError as err:
            owner = f"{cls.kind_name()} {cls.name!r}"
            raise ConfigError(format_validation_error(owner, err, cls.config_class.model_fields)) from None
        object.__setattr__(cfg, "__pydantic_fields_set__", set(data) & set(cls.config_class.model_fields))
        return cfg

    @classmethod
    def preset_values(cls, preset: str | None) -> dict[str, Any]:
        """The config values of ``preset`` (reserved keys left out); {} for None. Unknown names are errors."""
        if preset is None or "preset" not in cls.config_class.model_fields:
            return {}
        if preset not in cls.presets:
            known = ", ".join(sorted(cls.presets)) or "none"
            raise ConfigError(
                f"{cls.kind_name()} {cls.name!r}: unknown preset {preset!r} (known: {known}).{did_you_mean(preset, cls.presets)}"
            )
        values = {k: v for k, v in cls.presets[preset].items() if k not in RESERVED_PRESET_KEYS}
        stray = sorted(set(values) - set(cls.config_class.model_fields))
        if stray:
            raise ConfigError(f"{cls.kind_name()} {cls.name!r}: preset {preset!r} names unknown fields {stray}.")
        return values

    @classmethod
    def preset_flag(cls, preset: str | None, key: str) -> Any:
        """A reserved key of a preset (e.g. ``"weights"``), or None."""
        return cls.presets.get(preset, {}).get(key) if preset is not None else None

    @classmethod
    def kind_name(cls) -> str:
        return "component"

    @classmethod
    def code_digest(cls) -> str:
        """Digest of the source that defines this component (see :func:`aligncore.identity.source_digest`)."""
        from .identity import source_digest

        return source_digest(cls)

    @classmethod
    def options_help(cls) -> list[tuple[str, str, str]]:
        """(field, default, description) for every config field: the CLI's help text."""
        return fields_help(cls.config_class)


def fields_help(config_class: type[BaseModel]) -> list[tuple[str, str, str]]:
    """(field, default, description) for every field of a pydantic model."""
    rows = []
    for fname, field in config_class.model_fields.items():
        default = "required" if field.is_required() else repr(field.get_default(call_default_factory=True))
        rows.append((fname, default, field.description or ""))
    return rows
