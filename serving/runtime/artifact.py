"""An exported model artifact: its manifest, and loading it with every file verified.

An artifact is a folder `<model>-<version>/` with `manifest.json`, `model.onnx`,
`weights.safetensors` and `MODEL_CARD.md`. The manifest says everything the runtime needs (the
network's `Architecture`, classes, per-class operating thresholds and anonymization styles, the
input size and tiling) and where the model came from; `files` holds the sha256 of every other
file, and `manifest_sha256` the sha256 of the manifest's own canonical JSON (sorted keys, no
whitespace) without that key, so an edited threshold is caught like an altered weights file.
These checksums detect accidents (a half-finished copy, bit rot, a hand edit), not an attacker,
who can recompute them; pins given out-of-band do (see `serving.runtime.artifact_set`).

`load_artifact` refuses an artifact from a newer schema than this runtime reads, a missing or
altered file, a manifest that is not one, and a manifest holding a value the runtime cannot run
safely (`manifest_problems`: a threshold that is not a number from score_floor to 1, a class
without a style it can draw, a tiling it cannot cut, ...); nothing is unpickled (JSON, ONNX,
safetensors). The set of artifacts a deployment loads is `serving.runtime.artifact_set`'s.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from serving.runtime.anonymize import METHODS, SHAPES, Style
from serving.runtime.backends import InputSize
from serving.runtime.checksum import file_sha256
from serving.runtime.errors import ArtifactError
from serving.runtime.release import Gate, release_notice, release_problems
from serving.runtime.tiles import TilingSpec

__all__ = [
    "MANIFEST",
    "SCHEMA_VERSION",
    "SHA256_HEX",
    "Artifact",
    "Manifest",
    "load_artifact",
    "manifest_body",
    "manifest_digest",
    "manifest_problems",
    "verify_files",
]

# 2: the manifest records the gate its model passed (`gate`, `notice`). 1 (no gate) still loads,
# as a model that passed no known gate (`--allow-demo` only).
SCHEMA_VERSION = 3
MANIFEST = "manifest.json"
# `architecture.Architecture.kind` (that module needs torch, which an onnx deployment lacks).
KINDS = ("maskrcnn", "keypointrcnn")
# The files the runtime loads: model.onnx (onnx backend), weights.safetensors (torch backend).
RUNTIME_FILES = ("model.onnx", "weights.safetensors")
TILING_KEYS = tuple(f.name for f in fields(TilingSpec))
# Bounds no export comes near: past them a value is a slip of the hand, and would make the
# runtime crawl or run out of memory (a scale of 100 cuts a panorama into millions of windows).
MAX_INPUT_SIZE = 8192
MIN_TILE = 32
# The most windows per call of an exported graph (export.batch's bound).
MAX_BATCH = 64
MAX_SCALE = 8.0
# A sha256 as manifests write it.
SHA256_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Manifest:
    """What `manifest.json` holds (see the module docstring).

    name / version: the model's name and its registered version. architecture: an
    `architecture.Architecture` as a dict. thresholds: per class, the lowest score that counts
    (chosen on val for the target recall). styles: per class, an `anonymize.Style` as a dict.
    input_size: the side of the network's fixed square input (`backends.InputSize.canvas`).
    batch: the windows model.onnx takes per call, the fixed batch it was exported at (schema 3:
    input (batch, 3, S, S), and a fifth output, the window of each detection; schemas 1 and 2:
    one (3, S, S) window, four outputs, batch 1).
    score_floor: the score below which the network itself drops detections (no threshold may be
    lower). mask_threshold: mask probability from which a pixel belongs to the object.
    tiling: a `TilingSpec` as a dict. recall: headline recall per reference set and class.
    provenance: code, data and run it came from, and `weights_sha256`, the sha256 of the
    weights validate passed (export writes it; when present it must be files'
    weights.safetensors). parity: the ONNX check's numbers. files: file name -> sha256.
    gate: the gate validate passed the model under (`release.Gate` as a dict; empty in schema
    1). notice: `release.release_notice` of that gate, the first line of manifest.json.
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
    batch: int = 1
    recall: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    parity: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    created: str = ""
    gate: dict[str, Any] = field(default_factory=dict)
    notice: str = ""
    schema_version: int = SCHEMA_VERSION

    @property
    def kind(self) -> str:
        return str(self.architecture["kind"])

    @property
    def weights_sha256(self) -> str:
        """The sha256 of weights.safetensors (the validated weights: see provenance)."""
        return str(self.files["weights.safetensors"])

    @property
    def tiling_spec(self) -> TilingSpec:
        spec = dict(self.tiling)
        spec["scales"] = tuple(spec.get("scales", (1.0,)))
        return TilingSpec(**spec)

    def release_problems(self) -> list[str]:
        """What keeps the gate this model passed from being the release gate
        (`release.release_problems`); empty when it passed the release gate."""
        if not self.gate:
            return ["the manifest records no gate (exported before gates were recorded)"]
        return release_problems(Gate.from_dict(self.gate))

    def to_json(self) -> dict[str, Any]:
        """The manifest as written, `manifest_sha256` included."""
        body = asdict(self)
        return {**body, "manifest_sha256": manifest_digest(body)}

    @staticmethod
    def from_json(raw: Mapping[str, Any], where: str) -> Manifest:
        """The manifest of a parsed `manifest.json`; ArtifactError on anything but a manifest
        of a schema this runtime reads holding values it can run safely (`manifest_problems`)."""
        if not isinstance(raw, Mapping) or "schema_version" not in raw:
            raise ArtifactError(f"{where}: not an anonlab artifact manifest (no schema_version)")
        body = manifest_body(
            raw, where, Manifest, newest=SCHEMA_VERSION, what="artifact", redo="the model"
        )
        manifest = Manifest(**body)
        problems = manifest_problems(manifest)
        if problems:
            raise ArtifactError(
                f"{where}: invalid manifest: {'; '.join(problems)}. Export the model again "
                "(`anonlab export`) instead of editing its manifest"
            )
        return manifest


def manifest_problems(m: Manifest) -> list[str]:
    """What in `m` the runtime cannot run safely, each as `key = value: what is allowed`; empty
    when nothing. Checks types and ranges, not files (`load_artifact` checks those)."""
    out: list[str] = []
    for key in ("name", "version"):
        if not (isinstance(getattr(m, key), str) and getattr(m, key).strip()):
            out.append(_bad(key, getattr(m, key), "must be a non-empty string"))
    if not isinstance(m.created, str):
        out.append(_bad("created", m.created, "must be a string"))
    if not (_is_int(m.schema_version) and 1 <= m.schema_version <= SCHEMA_VERSION):
        out.append(_bad("schema_version", m.schema_version, f"must be 1 to {SCHEMA_VERSION}"))
    objects = ("architecture", "thresholds", "styles", "tiling", "recall", "provenance", "gate")
    not_objects = [
        k for k in (*objects, "parity", "files") if not isinstance(getattr(m, k), Mapping)
    ]
    out += [_bad(k, getattr(m, k), "must be a JSON object") for k in not_objects]
    if not_objects:
        return out  # the checks below read them as objects
    classes = m.classes
    if not (
        isinstance(classes, list) and classes and all(isinstance(c, str) and c for c in classes)
    ):
        out.append(_bad("classes", classes, "must be a non-empty list of class names"))
        classes = None
    elif len(set(classes)) != len(classes):
        twice = sorted({c for c in classes if classes.count(c) > 1})
        out.append(_bad("classes", classes, f"lists {twice} more than once; each class once"))
        classes = None
    floor_ok = _is_number(m.score_floor) and 0 <= m.score_floor < 1
    if not floor_ok:
        out.append(_bad("score_floor", m.score_floor, "must be a number from 0 to below 1"))
    if not (_is_number(m.mask_threshold) and 0 < m.mask_threshold < 1):
        out.append(_bad("mask_threshold", m.mask_threshold, "must be a number above 0, below 1"))
    if classes is not None:
        out += _threshold_problems(m.thresholds, classes, m.score_floor if floor_ok else 0.0)
        out += _style_problems(m.styles, classes)
    out += _architecture_problems(m.architecture, classes)
    out += _tiling_problems(m.tiling)
    out += _input_size_problems(m)
    if not (_is_int(m.batch) and 1 <= m.batch <= MAX_BATCH):
        out.append(_bad("batch", m.batch, f"must be a whole number 1 to {MAX_BATCH}"))
    elif m.batch != 1 and _is_int(m.schema_version) and m.schema_version < 3:
        out.append(_bad("batch", m.batch, "must be 1 before schema 3 (one window per call)"))
    for name in RUNTIME_FILES:
        if name not in m.files:
            out.append(f"files: lists no {name}, which the runtime loads")
    for name, sha in m.files.items():
        if not (isinstance(sha, str) and SHA256_HEX.fullmatch(sha)):
            out.append(_bad(f"files.{name}", sha, "must be the file's sha256 (64 hex digits)"))
    out += _gate_problems(m)
    validated = m.provenance.get("weights_sha256")
    if validated is not None and validated != m.files.get("weights.safetensors"):
        out.append(
            _bad(
                "provenance.weights_sha256",
                validated,
                "must be files' weights.safetensors sha256: the weights validate passed are the "
                "weights shipped",
            )
        )
    return out


def _gate_problems(m: Manifest) -> list[str]:
    """The gate must be one (`Gate.from_dict`), and the notice the one it implies, so that the
    first line of manifest.json tells the truth; schema 1 manifests hold neither."""
    if not m.gate:
        if m.notice or (_is_int(m.schema_version) and m.schema_version >= 2):
            return [_bad("gate", m.gate, "must be the gate validate passed the model under")]
        return []
    try:
        gate = Gate.from_dict(m.gate)
    except ValueError as exc:
        return [f"gate: {exc}"]
    expected = release_notice(release_problems(gate))
    if m.notice != expected:
        return [_bad("notice", m.notice, f"must be the gate's notice, {expected!r}")]
    return []


def _input_size_problems(m: Manifest) -> list[str]:
    """input_size must be the canvas export traced the ONNX graph at (`InputSize.of`): on any
    other the network sees tiles at a scale evaluate did not measure."""
    if not (_is_int(m.input_size) and 1 <= m.input_size <= MAX_INPUT_SIZE):
        return [_bad("input_size", m.input_size, f"must be a whole number 1 to {MAX_INPUT_SIZE}")]
    min_size, max_size = m.architecture.get("min_size"), m.architecture.get("max_size")
    tile = m.tiling.get("tile")
    sizes_ok = all(_is_int(v) and 1 <= v <= MAX_INPUT_SIZE for v in (min_size, max_size))
    if not (sizes_ok and _is_int(tile) and MIN_TILE <= tile <= MAX_INPUT_SIZE):
        return []  # reported as the architecture's or the tiling's problem
    canvas = InputSize.of(min_size, max_size, tile).canvas
    if m.input_size == canvas:
        return []
    return [
        _bad(
            "input_size",
            m.input_size,
            f"must be {canvas}, the network input for architecture.min_size {min_size} and "
            f"tiling.tile {tile} (export traces the ONNX graph at it; evaluate measured it)",
        )
    ]


def _threshold_problems(
    thresholds: Mapping[str, Any], classes: list[str], floor: float
) -> list[str]:
    out = [
        f"thresholds: no operating threshold for class {c!r}"
        for c in classes
        if c not in thresholds
    ]
    for cls, value in thresholds.items():
        if cls not in classes:
            out.append(_bad(f"thresholds.{cls}", value, f"{cls!r} is not one of classes {classes}"))
        elif not (_is_number(value) and floor <= value <= 1):
            out.append(
                _bad(f"thresholds.{cls}", value, f"must be a number from score_floor {floor} to 1")
            )
    return out


def _style_problems(styles: Mapping[str, Any], classes: list[str]) -> list[str]:
    out = [f"styles: no style for class {c!r}" for c in classes if c not in styles]
    for cls, value in styles.items():
        if cls not in classes:
            out.append(_bad(f"styles.{cls}", value, f"{cls!r} is not one of classes {classes}"))
            continue
        try:
            Style.from_dict(value)
        except (TypeError, ValueError) as exc:
            out.append(
                _bad(
                    f"styles.{cls}",
                    value,
                    f"{exc}; every class a model detects is hidden: a style is a shape "
                    f"({', '.join(SHAPES)}), a method ({', '.join(METHODS)}), margin and feather",
                )
            )
    return out


def _architecture_problems(arch: Mapping[str, Any], classes: list[str] | None) -> list[str]:
    """What the runtime reads of the architecture; the torch backend checks the rest when it
    builds the network (`architecture.Architecture.from_dict`)."""
    out = []
    if arch.get("kind") not in KINDS:
        out.append(
            _bad("architecture.kind", arch.get("kind"), f"must be one of {', '.join(KINDS)}")
        )
    sizes = {key: arch.get(key) for key in ("min_size", "max_size")}
    for key, value in sizes.items():
        if not (_is_int(value) and 1 <= value <= MAX_INPUT_SIZE):
            out.append(_bad(f"architecture.{key}", value, f"must be 1 to {MAX_INPUT_SIZE}"))
    min_size, max_size = sizes.values()
    if all(_is_int(v) for v in sizes.values()) and min_size > max_size:
        out.append(_bad("architecture.min_size", min_size, f"must be at most max_size {max_size}"))
    if classes is not None and arch.get("classes") != classes:
        out.append(
            _bad(
                "architecture.classes",
                arch.get("classes"),
                f"must be classes {classes}: the network's label i + 1 is classes[i]",
            )
        )
    names = arch.get("keypoint_names")
    if arch.get("kind") == "keypointrcnn" and not (
        isinstance(names, list) and names and all(isinstance(n, str) and n for n in names)
    ):
        out.append(_bad("architecture.keypoint_names", names, "a keypointrcnn names its keypoints"))
    return out


def _tiling_problems(tiling: Mapping[str, Any]) -> list[str]:
    missing = [k for k in TILING_KEYS if k not in tiling]
    unknown = sorted(set(tiling) - set(TILING_KEYS))
    if missing or unknown:
        return [f"tiling: missing keys {missing}, unknown keys {unknown}; its keys: {TILING_KEYS}"]
    out = []
    tile, overlap, scales = tiling["tile"], tiling["overlap"], tiling["scales"]
    if not (_is_int(tile) and MIN_TILE <= tile <= MAX_INPUT_SIZE):
        out.append(
            _bad("tiling.tile", tile, f"must be a whole number {MIN_TILE} to {MAX_INPUT_SIZE}")
        )
    elif not (_is_int(overlap) and 0 <= overlap < tile):
        out.append(
            _bad("tiling.overlap", overlap, f"must be a whole number 0 to below tile {tile}")
        )
    if not (
        isinstance(scales, list)
        and scales
        and all(_is_number(s) and 0 < s <= MAX_SCALE for s in scales)
    ):
        out.append(
            _bad("tiling.scales", scales, f"must be a list of numbers above 0, to {MAX_SCALE}")
        )
    aspect = tiling["panorama_aspect"]
    if not (_is_number(aspect) and 0 <= aspect < math.inf):
        out.append(_bad("tiling.panorama_aspect", aspect, "must be a finite number >= 0 (0: none)"))
    if not (_is_number(tiling["merge_iou"]) and 0 < tiling["merge_iou"] <= 1):
        out.append(_bad("tiling.merge_iou", tiling["merge_iou"], "must be a number above 0, to 1"))
    if not out:
        try:
            TilingSpec(**{**tiling, "scales": tuple(scales)})
        except ValueError as exc:
            out.append(f"tiling: {exc}")
    return out


def _is_number(value: object) -> bool:
    """A JSON number (not true/false); NaN and infinities fail every range check above."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bad(key: str, value: object, allowed: str) -> str:
    shown = repr(value)
    return f"{key} = {shown if len(shown) <= 80 else shown[:77] + '...'}: {allowed}"


def manifest_body(
    raw: Mapping[str, Any], where: str, record: type, *, newest: int, what: str, redo: str
) -> dict[str, Any]:
    """The keys of a parsed manifest of dataclass `record` (without manifest_sha256), once its
    schema_version is one this runtime reads (at most `newest`), its manifest_sha256 is that of
    its content, and it holds every key of `record` that has no default and no other key.
    ArtifactError naming `where` otherwise; `what` is what the manifest describes (artifact,
    anonymizer) and `redo` what to export again instead of editing it."""
    schema = raw.get("schema_version")
    if not isinstance(schema, int) or isinstance(schema, bool) or schema > newest:
        raise ArtifactError(
            f"{where}: schema_version {schema!r} is newer than this runtime reads "
            f"({newest}); upgrade anonlab's runtime to load this {what}"
        )
    body = {k: v for k, v in raw.items() if k != "manifest_sha256"}
    if raw.get("manifest_sha256") != manifest_digest(body):
        raise ArtifactError(
            f"{where}: the manifest was altered after export (its manifest_sha256 does not "
            f"match its content); export {redo} again instead of editing the manifest"
        )
    unknown = sorted(set(body) - {f.name for f in fields(record)})
    if unknown:
        raise ArtifactError(f"{where}: unknown manifest keys {unknown}")
    required = [
        f.name for f in fields(record) if f.default is MISSING and f.default_factory is MISSING
    ]
    missing = [name for name in required if name not in body]
    if missing:
        raise ArtifactError(f"{where}: the manifest has no {', '.join(missing)}")
    return body


def manifest_digest(body: Mapping[str, Any]) -> str:
    """sha256 of a manifest's canonical JSON (sorted keys, compact), without manifest_sha256."""
    content = {k: v for k, v in body.items() if k != "manifest_sha256"}
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


@dataclass(frozen=True)
class Artifact:
    """A verified artifact folder, its manifest, and the manifest's sha256 (what pins name)."""

    path: Path
    manifest: Manifest
    manifest_sha256: str

    def file(self, name: str) -> Path:
        if name not in self.manifest.files:
            raise ArtifactError(f"{self.path}: the manifest lists no {name}")
        return self.path / name

    def identity(self) -> dict[str, str]:
        """Which model this is, JSON-ready: name, version, the sha256 of its weights (those
        validate passed), its manifest_sha256 (what pins name), and whether it passed the
        release gate (`release`; False only under --allow-demo)."""
        m = self.manifest
        return {
            "name": m.name,
            "version": m.version,
            "weights_sha256": m.weights_sha256,
            "manifest_sha256": self.manifest_sha256,
            "release": not m.release_problems(),
        }


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
    verify_files(folder, manifest_path, manifest.files, what="artifact")
    return Artifact(folder, manifest, raw["manifest_sha256"])


def verify_files(folder: Path, manifest_path: Path, files: Mapping[str, str], *, what: str) -> None:
    """Every file a manifest lists (name -> sha256) is in `folder` with that sha256.
    ArtifactError naming it otherwise: an entry leaving the folder, a missing or an altered
    file; `what` (artifact, anonymizer) is what to copy again."""
    for name, expected in sorted(files.items()):
        target = folder / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise ArtifactError(f"{manifest_path}: file entry {name!r} leaves the folder")
        if not target.is_file():
            raise ArtifactError(f"{folder}: {name} is missing; copy the whole {what} folder")
        actual = file_sha256(target)
        if actual != expected:
            raise ArtifactError(
                f"{folder}: {name} was altered or corrupted (sha256 {actual[:12]}..., the "
                f"manifest says {expected[:12]}...); copy the {what} again from its source"
            )
