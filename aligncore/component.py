"""What every component (branch, builder, fusion) shares: a name, help and a typed config."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import ConfigError


class ComponentConfig(BaseModel):
    """Base of every component config: unknown fields are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), validate_assignment=True)


def format_validation_error(owner: str, err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(config)"
        parts.append(f"{loc}: {e['msg']}")
    return f"Invalid configuration for {owner}: " + "; ".join(parts) + "."


class Component:
    """Mixin: ``name``, one-line ``help`` and a pydantic ``config_class``."""

    name: ClassVar[str] = ""
    help: ClassVar[str] = ""
    config_class: ClassVar[type[ComponentConfig]] = ComponentConfig

    def __init__(self, config: ComponentConfig | dict | None = None, **overrides: Any):
        self.config = self.make_config(config, **overrides)

    @classmethod
    def make_config(cls, config: ComponentConfig | dict | None = None, **overrides: Any):
        if isinstance(config, ComponentConfig):
            data = config.model_dump()
        else:
            data = dict(config or {})
        data.update({k: v for k, v in overrides.items()})
        try:
            return cls.config_class(**data)
        except ValidationError as err:
            raise ConfigError(format_validation_error(f"{cls.kind_name()} {cls.name!r}", err)) from None

    @classmethod
    def kind_name(cls) -> str:
        return "component"

    @classmethod
    def options_help(cls) -> list[tuple[str, str, str]]:
        """(field, default, description) for every config field: the CLI's help text."""
        rows = []
        for fname, field in cls.config_class.model_fields.items():
            default = "required" if field.is_required() else repr(field.get_default(call_default_factory=True))
            rows.append((fname, default, field.description or ""))
        return rows
