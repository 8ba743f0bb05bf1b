"""An exported model artifact: its manifest, and loading it with every file verified.

An artifact is a folder `<model>-<version>/` with `manifest.json`, `model.onnx`,
`weights.safetensors` and `MODEL_CARD.md`. The manifest says everything the runtime needs (the
network's `Architecture`, classes, per-class operating thresholds and anonymization styles, the
input size and tiling) and where the model came from; `files` holds the sha256 of every other
file, and `manifest_sha256` the sha256 of the manifest's own canonical JSON (sorted keys, no
whitespace) without that key, so an edited threshold is caught like an altered weights file.
These are integrity checks, not signatures: they catch a corrupted copy or a hand edit, not a
forger who recomputes them (sign the folder for that).

`load_artifact` refuses an artifact from a newer schema than this runtime reads, a missing or
altered file, and a manifest that is not one; nothing is unpickled (JSON, ONNX, safetensors).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from serving.runtime.checksum import file_sha256
from serving.runtime.errors import ArtifactError
from serving.runtime.tiles import TilingSpec

__all__ = [
    "MANIFEST",
    "SCHEMA_VERSION",
    "Artifact",
    "Manifest",
    "load_artifact",
    "manifest_digest",
]

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Manifest:
    """What `manifest.json` holds (see the module docstring).

    name / version: the model's name and its registered version. architecture: an
    `architecture.Architecture` as a dict. thresholds: per class, the lowest score that counts
    (chosen on val for the target recall). styles: per class, an `anonymize.Style` as a dict.
    input_size: the side of the network's fixed square input (`backends.InputSize.canvas`).
    score_floor: the score below which the network itself drops detections (no threshold may be
    lower). mask_threshold: mask probability from which a pixel belongs to the object.
    tiling: a `TilingSpec` as a dict. recall: headline recall per reference set and class.
    provenance: code, data and run it came from. parity: the ONNX check's numbers.
    files: file name -> sha256.
    """

    name: str
    version: str
    architecture: dict[str, Any]
    classes: list[str]
    thresholds: dict[str, float]
    styles: dict[str, dict[str, Any]]
    input_size: int
    score_floor: float
    mask_threshold: float
    tiling: dict[str, Any]
    recall: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    parity: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    created: str = ""
    schema_version: int = SCHEMA_VERSION

    @property
    def kind(self) -> str:
        return str(self.architecture["kind"])

    @property
    def tiling_spec(self) -> TilingSpec:
        spec = dict(self.tiling)
        spec["scales"] = tuple(spec.get("scales", (1.0,)))
        return TilingSpec(**spec)

    def to_json(self) -> dict[str, Any]:
        """The manifest as written, `manifest_sha256` included."""
        body = asdict(self)
        return {**body, "manifest_sha256": manifest_digest(body)}

    @staticmethod
    def from_json(raw: Mapping[str, Any], where: str) -> Manifest:
        """The manifest of a parsed `manifest.json`; ArtifactError on anything but a manifest of
        a schema this runtime reads."""
        if not isinstance(raw, Mapping) or "schema_version" not in raw:
            raise ArtifactError(f"{where}: not an anonlab artifact manifest (no schema_version)")
        schema = raw["schema_version"]
        if not isinstance(schema, int) or schema > SCHEMA_VERSION:
            raise ArtifactError(
                f"{where}: schema_version {schema!r} is newer than this runtime reads "
                f"({SCHEMA_VERSION}); upgrade anonlab's runtime to load this artifact"
            )
        body = {k: v for k, v in raw.items() if k != "manifest_sha256"}
        if raw.get("manifest_sha256") != manifest_digest(body):
            raise ArtifactError(
                f"{where}: the manifest was altered after export (its manifest_sha256 does not "
                "match its content); export the model again instead of editing the manifest"
            )
        names = {f.name for f in fields(Manifest)}
        unknown = sorted(set(body) - names)
        if unknown:
            raise ArtifactError(f"{where}: unknown manifest keys {unknown}")
        try:
            manifest = Manifest(**body)
            manifest.tiling_spec  # noqa: B018 (validates the tiling)
        except (TypeError, ValueError) as exc:
            raise ArtifactError(f"{where}: invalid manifest ({exc})") from None
        missing = [c for c in manifest.classes if c not in manifest.thresholds]
        if missing:
            raise ArtifactError(f"{where}: no operating threshold for classes {missing}")
        return manifest


def manifest_digest(body: Mapping[str, Any]) -> str:
    """sha256 of a manifest's canonical JSON (sorted keys, compact), without manifest_sha256."""
    content = {k: v for k, v in body.items() if k != "manifest_sha256"}
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


@dataclass(frozen=True)
class Artifact:
    """A verified artifact folder and its manifest."""

    path: Path
    manifest: Manifest

    def file(self, name: str) -> Path:
        if name not in self.manifest.files:
            raise ArtifactError(f"{self.path}: the manifest lists no {name}")
        return self.path / name


def load_artifact(path: str | Path) -> Artifact:
    """The artifact at `path`, after checking its schema and the sha256 of every file it lists.

    Raises ArtifactError naming the folder and what is wrong: missing, not an artifact, a newer
    schema, an altered manifest, a missing or altered file.
    """
    folder = Path(path)
    manifest_path = folder / MANIFEST
    if not folder.is_dir():
        raise ArtifactError(f"{folder}: no such artifact folder (`anonlab export` writes them)")
    try:
        raw = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(
            f"{folder}: no {MANIFEST}; this is not an exported artifact (`anonlab export`)"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{manifest_path}: not readable JSON ({exc})") from None
    manifest = Manifest.from_json(raw, str(manifest_path))
    for name, expected in sorted(manifest.files.items()):
        target = folder / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise ArtifactError(f"{manifest_path}: file entry {name!r} leaves the folder")
        if not target.is_file():
            raise ArtifactError(f"{folder}: {name} is missing; copy the whole artifact folder")
        actual = file_sha256(target)
        if actual != expected:
            raise ArtifactError(
                f"{folder}: {name} was altered or corrupted (sha256 {actual[:12]}..., the "
                f"manifest says {expected[:12]}...); copy the artifact again from its source"
            )
    return Artifact(folder, manifest)
