"""Configuration: compose `conf/` with Hydra, apply `key=value` overrides, validate strictly.

`conf/` is the single source of truth; `params.yaml` is its resolved composition, written by
`anonlab config` exactly as DVC's Hydra integration writes it for `dvc exp run -S`. Stages read
`params.yaml`, apply the command line's overrides on top, and validate the result against
pydantic models before any work starts. This module holds that mechanism and the sections the
`data` stages read; other packages define their own sections on the same base.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from data.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class TaxonomyConfig(Section):
    classes: list[str] = Field(min_length=1)
    keypoints: list[str]
    # Per class, the box height in pixels from which an object can identify someone; smaller
    # ones are scored in their own row and not judged by the gate. A class not named: every
    # object counts.
    identifiable: dict[str, Annotated[float, Field(ge=0, allow_inf_nan=False)]] = Field(
        default_factory=dict
    )


# Option names that carry credentials; they belong in the environment, never in params.yaml
# (it is committed, tracked by DVC and logged to MLflow).
SECRET_KEY = re.compile(r"(secret|password|token|passwd|credential|^key$|access_key)", re.I)


class CredentialInConfig(ValueError):
    """A config value that holds a credential. Its error names the key, never the value."""


class SourceConfig(Section):
    # `synthetic`, a local folder or glob, or an fsspec URL (s3://, gs://, ...).
    uri: str = Field(min_length=1)
    # Capture session for every image of this source; None: each image's parent folder name.
    session: str | None = None
    # Name recorded in the manifest; None: the uri.
    name: str | None = None
    storage_options: dict[str, Any] = Field(default_factory=dict)
    # A source that lists no image files (empty, absent, a glob without a match) is an error
    # unless this is set; then collect goes on and keeps what the source stored before.
    allow_empty: bool = False
    # A source with folders that cannot be listed (or that cannot be listed at all) is an error
    # unless this is set; then collect takes what can be listed, records the folders in the
    # quarantine as `unlisted`, and removes nothing the source stored before.
    allow_unreadable: bool = False

    @field_validator("storage_options")
    @classmethod
    def _no_secrets(cls, value: dict[str, Any]) -> dict[str, Any]:
        def walk(obj: Any, prefix: str) -> None:
            if isinstance(obj, dict):
                for k, v in obj.items():
                    if SECRET_KEY.search(str(k)):
                        raise CredentialInConfig(
                            f"'{prefix}{k}' looks like a credential; credentials never go in the "
                            "config (params.yaml is committed and logged). Set them in the "
                            "environment instead (for S3: AWS_ACCESS_KEY_ID, "
                            "AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN)"
                        )
                    walk(v, f"{prefix}{k}.")

        walk(value, "")
        return value

    @property
    def label(self) -> str:
        return self.name or self.uri.rstrip("/")


class SyntheticConfig(Section):
    count: int = Field(ge=0)
    seed: int
    width: int = Field(ge=64)
    height: int = Field(ge=64)
    panorama_width: int = Field(ge=128)
    panorama_share: float = Field(ge=0, le=1)
    frames_per_session: int = Field(ge=1)
    empty_share: float = Field(ge=0, le=1)
    near_duplicate_share: float = Field(ge=0, le=1)
    dark_share: float = Field(ge=0, le=1)
    blurry_share: float = Field(ge=0, le=1)


class CollectConfig(Section):
    sources: list[SourceConfig] = Field(min_length=1)
    retention_days: int = Field(ge=1)
    max_pixels: int = Field(ge=1)
    workers: int = Field(ge=1, le=64)
    synthetic: SyntheticConfig


class ReviewConfig(Section):
    min_width: int = Field(ge=1)
    min_height: int = Field(ge=1)
    dark_threshold: float = Field(ge=0, le=1)
    overexposed_threshold: float = Field(ge=0, le=1)
    blur_threshold: float = Field(ge=0)
    near_duplicate_hamming: int = Field(ge=0, le=64)
    near_duplicate_scope: Literal["session", "all"]
    work_size: int = Field(ge=32, le=4096)
    report_thumbnails: int = Field(ge=0)
    workers: int = Field(ge=1, le=64)


class ReferenceSetConfig(Section):
    """A named held-out set: never in train or val. Selected from the annotated images by
    capture session or by tag (a source name, or a tag in a manifest record's extra["tags"]),
    or given as an external COCO file with its images."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    sessions: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)
    coco: str | None = None
    images: str | None = None  # the external COCO file's image folder; default: its folder

    @model_validator(mode="after")
    def _one_selection(self) -> ReferenceSetConfig:
        if bool(self.coco) == bool(self.sessions or self.tags):
            raise ValueError(
                f"reference set '{self.name}' needs either sessions/tags or a coco file, "
                "not both and not neither"
            )
        return self


class TilingConfig(Section):
    # Tile side in pixels: the training input size. Larger images are cut into tiles.
    size: int = Field(ge=64)
    overlap: int = Field(ge=0)
    # An object cut by a tile edge is kept when at least this share of its pixels is inside.
    min_visible: float = Field(ge=0, le=1)
    # Share of the tiles without objects that are kept (hard negatives: signs, posters).
    empty_ratio: float = Field(ge=0, le=1)
    jpeg_quality: int = Field(ge=50, le=100)

    @model_validator(mode="after")
    def _overlap_below_size(self) -> TilingConfig:
        if self.overlap >= self.size:
            raise ValueError(f"overlap ({self.overlap}) must be smaller than size ({self.size})")
        return self


class PrepareConfig(Section):
    seed: int
    val_ratio: float = Field(ge=0, lt=1)
    reference_sets: list[ReferenceSetConfig]
    # Train images within this many pHash bits of a reference image are leaks (an error).
    leak_hamming: int = Field(ge=0, le=64)
    tiling: TilingConfig
    # Warn when a reference set will lose images to retention within this many days.
    reference_expiry_warning_days: int = Field(ge=0)


class PathsConfig(Section):
    artifacts: str


# ---------------------------------------------------------------------------------------------
# Composition and params.yaml


def compose(conf_dir: str | Path, overrides: Sequence[str] = (), name: str = "config") -> str:
    """Compose the Hydra tree at `conf_dir` and return it as params.yaml text.

    The text is what DVC writes for `dvc exp run -S` (resolved, `OmegaConf.to_yaml`), so a
    `params.yaml` written by either is the same file.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    conf_dir = Path(conf_dir).resolve()
    if not (conf_dir / f"{name}.yaml").is_file():
        raise ConfigError(
            f"no {name}.yaml in {conf_dir}: run anonlab from the project root (the folder "
            "holding conf/ and params.yaml)"
        )
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base=None):
            cfg = hydra_compose(config_name=name, overrides=list(overrides))
        OmegaConf.resolve(cfg)
        return OmegaConf.to_yaml(cfg)
    except (HydraException, OmegaConfBaseException) as e:
        unknown = _unknown_override(e, overrides)
        if unknown:
            raise ConfigError(
                f"invalid configuration:\n  {unknown}\nCorrect the key=value override."
            ) from None
        # Hydra's advice to append (+key) would add a key no stage reads, or a model through a
        # defaults entry conf/config.yaml does not have: not what a mistyped name wants.
        said = "\n".join(line for line in str(e).splitlines() if "use +" not in line)
        raise ConfigError(f"cannot compose {conf_dir}: {said}") from None


def _unknown_override(error: Exception, overrides: Sequence[str]) -> str | None:
    """What Hydra failed on, in the words of `validate`'s errors, when it is an override of a
    key the composition does not have; None for any other failure."""
    from omegaconf import DictConfig
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    cause = error.__cause__
    if not isinstance(cause, ConfigKeyError | ConfigAttributeError):
        return None
    missing, parent = cause.full_key, cause.parent_node
    if not missing or not isinstance(parent, DictConfig):
        return None
    for text in overrides:
        key, eq, value = text.partition("=")
        if eq and (key == missing or key.startswith(f"{missing}.")):
            where, _, leaf = missing.rpartition(".")
            allowed = [str(k) for k in parent if where or k != "hydra"]
            close = closest_key(leaf, allowed)
            meant = f"{where}.{close}" if where else close
            rest = key[len(missing) :]  # what the override names below the unknown key
            hint = f"; did you mean '{meant}{rest}'? The allowed" if close else "; allowed"
            return (
                f"{key} = {value}: unknown key '{missing}'{hint} keys "
                f"{f'under {where}' if where else 'at the top'}: {', '.join(allowed)}"
            )
    return None


def closest_key(name: str, keys: Sequence[str]) -> str | None:
    """The key of `keys` that `name` most likely misspells (difflib), or None."""
    close = difflib.get_close_matches(name, keys, n=1, cutoff=0.75)
    return close[0] if close else None


def read_params(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"{path} not found: run `anonlab config` in the project root to write it from conf/"
        )
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, not {type(raw).__name__}")
    return raw


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return `raw` with `key=value` overrides applied (Hydra's override syntax and types).

    `a.b=1` sets a value, `a.b=[1,2]` a list, `a.b={x:1}` a mapping, `~a.b` deletes a key.
    Keys that do not exist are added here and reported as unknown by validation.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException
    from omegaconf import OmegaConf

    if not overrides:
        return raw
    parser = OverridesParser.create()
    cfg = OmegaConf.create(raw)
    for text in overrides:
        try:
            (override,) = parser.parse_overrides([text])
        except OverrideParseException as e:
            raise ConfigError(
                f"cannot parse override '{text}': {e}. Write key=value, e.g. "
                "collect.synthetic.count=50"
            ) from None
        key = override.key_or_group
        if override.is_delete():
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(cfg, parent) if parent else cfg
            if node is None or leaf not in node:
                raise ConfigError(f"cannot delete '{key}': no such key")
            del node[leaf]
            continue
        if override.is_sweep_override():
            raise ConfigError(f"'{text}': sweeps are for `dvc exp run`, not a single command")
        OmegaConf.update(cfg, key, override.value(), merge=False, force_add=True)
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def validate(raw: dict[str, Any], model: type[M]) -> M:
    """Validate `raw` against `model`; errors name each bad key, its value and what is allowed."""
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        problems = [_describe(err, model) for err in e.errors()]
        raise ConfigError(
            "invalid configuration:\n  "
            + "\n  ".join(problems)
            + "\nFix conf/ and run `anonlab config`, or correct the key=value override."
        ) from None


def _dotted(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _describe(err: Any, model: type[BaseModel]) -> str:
    loc = tuple(err["loc"])
    if not loc:  # a check across sections: its message names the keys
        return str(err["msg"]).removeprefix("Value error, ")
    key = _dotted(loc)
    # A credential, or anything under a key named like one, is never echoed back.
    secret = isinstance((err.get("ctx") or {}).get("error"), CredentialInConfig) or any(
        SECRET_KEY.search(str(part)) for part in loc
    )
    shown = key if secret else f"{key} = {err.get('input')!r}"
    if err["type"] == "extra_forbidden":
        allowed = _fields_at(model, loc[:-1])
        close = closest_key(str(loc[-1]), allowed)
        below = ""
        value = err.get("input")
        while isinstance(value, dict) and len(value) == 1:  # a.b=1 read as a = {'b': 1}
            ((part, value),) = value.items()
            below += f".{part}"
        meant = f"; did you mean '{_dotted((*loc[:-1], close))}{below}'?" if close else ""
        listed = f"keys here: {', '.join(allowed)}"
        hint = (" The allowed " if close else "; allowed ") + listed if allowed else ""
        return f"{shown}: unknown key{meant}{hint}"
    if err["type"] == "missing":
        return f"{key}: required key is missing"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    return f"{shown}: {msg}"


def _fields_at(model: type[BaseModel], loc: Sequence[int | str]) -> list[str]:
    """Field names of the model found by following `loc` from `model`; [] when not a model."""
    annotation: Any = model
    for part in loc:
        annotation = _unwrap(annotation, part)
        if annotation is None:
            return []
    annotation = _unwrap(annotation, None)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        # As params.yaml spells them: `validate`, not the attribute `validation`.
        return [field.alias or name for name, field in annotation.model_fields.items()]
    return []


def _unwrap(annotation: Any, part: int | str | None) -> Any:
    """Step from a type to the type of its member `part` (None: just strip Optional)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = members[0] if len(members) == 1 else annotation
        origin = typing.get_origin(annotation)
    if part is None:
        return annotation
    if isinstance(part, int):
        return typing.get_args(annotation)[0] if origin is list else None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        for name, field in annotation.model_fields.items():
            if part in (name, field.alias):
                return field.annotation
    return None
