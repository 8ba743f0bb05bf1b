"""One anonymizer from several models: which model supplies which class, at which threshold,
and the heads a keypoint model adds; and the composite artifact that ships it.

`Composition` is the rule `combine` applies to the members' detections of one image (each
member's own labels, tiled, not yet thresholded): each class the anonymizer hides comes from
one member only (`supplies`), kept at or above its operating threshold; the member supplying
`head` (a Keypoint R-CNN) gives, for each person it finds scoring at or above the `head`
threshold, a head region (`serving.runtime.heads`) hidden in the face's style. A keypoint model
that supplies no other class hides nothing but heads: its persons are not boxed (the Mask
R-CNN's masks hide persons along their outline). The evaluate stage runs this same rule
over the same detectors, so what it measures is what the runtime hides.

`default_supplies` is the rule export and evaluate use: each class from the first model (in
`train.models` order) that detects it, a model with masks before one without, and `head` from
the first keypoint model that finds persons.

A composite artifact is a folder `<name>-<version>/` holding `composite.json` (the
`CompositeManifest`), `MODEL_CARD.md`, and its members, complete artifacts, under `members/`
(each also loads on its own). `composite.json` names each member's folder and manifest_sha256
(which covers the sha256 of every file of the member), the supplies, thresholds (the `head`
threshold included), styles and head geometry, the gate the anonymizer passed, and the sha256
of its own canonical JSON like a member's manifest. `load_composite` refuses any mismatch.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from serving.runtime.anonymize import Style
from serving.runtime.artifact import (
    SHA256_HEX,
    Artifact,
    load_artifact,
    manifest_body,
    manifest_digest,
    verify_files,
)
from serving.runtime.detections import Detections
from serving.runtime.errors import ArtifactError
from serving.runtime.heads import HEAD, HeadSpec, head_detections
from serving.runtime.release import Gate, release_notice, release_problems

__all__ = [
    "COMPOSITE",
    "COMPOSITE_SCHEMA",
    "MEMBERS",
    "Composite",
    "CompositeManifest",
    "Composition",
    "Member",
    "default_supplies",
    "is_composite",
    "load_composite",
]

COMPOSITE = "composite.json"
MEMBERS = "members"
COMPOSITE_SCHEMA = 1
PERSON = "person"


@dataclass(frozen=True)
class Member:
    """What the composition needs of one member model: its name, its classes (label i + 1 is
    classes[i]), its kind (maskrcnn or keypointrcnn) and its keypoint names."""

    name: str
    classes: tuple[str, ...]
    kind: str
    keypoint_names: tuple[str, ...] = ()


def default_supplies(members: Sequence[Member], *, heads: bool = True) -> dict[str, str]:
    """Per class, the member that supplies it: the first that detects it, models with masks
    (maskrcnn) before those without; `head` (when `heads`) from the first keypointrcnn that
    detects persons. A keypoint model whose every class another model supplies adds heads
    only."""
    ordered = [m for m in members if m.kind == "maskrcnn"] + [
        m for m in members if m.kind != "maskrcnn"
    ]
    out: dict[str, str] = {}
    for m in ordered:
        for cls in m.classes:
            out.setdefault(cls, m.name)
    if heads:
        for m in members:
            if m.kind == "keypointrcnn" and PERSON in m.classes:
                out[HEAD] = m.name
                break
    return out


@dataclass(frozen=True)
class Composition:
    """How the members' detections become the anonymizer's (module docstring).

    members: in the order their detections are given to `combine`. supplies: class -> member
    name (`head` included when heads are hidden). thresholds: class -> the lowest score kept
    (for `head`, the person's score). heads: the head geometry, when `head` is supplied.
    """

    members: tuple[Member, ...]
    supplies: Mapping[str, str]
    thresholds: Mapping[str, float]
    heads: HeadSpec | None = None

    def __post_init__(self) -> None:
        names = [m.name for m in self.members]
        by_name = {m.name: m for m in self.members}
        if len(set(names)) != len(names):
            raise ValueError(f"members {names}: each member once")
        for cls, name in self.supplies.items():
            if name not in by_name:
                raise ValueError(f"{cls} is supplied by {name!r}, which is not a member {names}")
            member = by_name[name]
            if cls == HEAD:
                if member.kind != "keypointrcnn" or PERSON not in member.classes:
                    raise ValueError(f"heads come from a keypoint model of persons, not {name}")
                if self.heads is None:
                    raise ValueError("heads are supplied, but no head geometry is given")
                self.heads.indices(member.keypoint_names)
            elif cls not in member.classes:
                raise ValueError(f"{name} does not detect {cls}, which it is said to supply")
            if cls not in self.thresholds:
                raise ValueError(f"no operating threshold for {cls}")

    @property
    def classes(self) -> list[str]:
        """The anonymizer's classes: label i + 1 of `combine`'s detections is classes[i]. In
        name order, `head` last, whatever the order of `supplies` (composite.json sorts its
        keys): evaluate and the runtime number the labels alike."""
        named = sorted(c for c in self.supplies if c != HEAD)
        return named + ([HEAD] if HEAD in self.supplies else [])

    def with_thresholds(self, thresholds: Mapping[str, float]) -> Composition:
        """This composition with some thresholds replaced."""
        merged = {**self.thresholds, **thresholds}
        return Composition(self.members, self.supplies, merged, self.heads)

    def combine(self, found: Sequence[Detections]) -> Detections:
        """The anonymizer's detections of one image from each member's (`found[i]` of
        `members[i]`, in its own labels): each class from its supplier at or above its
        threshold, then the heads; labels into `classes`, no keypoints."""
        if len(found) != len(self.members):
            raise ValueError(f"{len(found)} detections for {len(self.members)} members")
        classes = self.classes
        parts = []
        for member, dets in zip(self.members, found, strict=True):
            labels = np.asarray(dets.labels)
            for i, cls in enumerate(member.classes):
                if self.supplies.get(cls) != member.name:
                    continue
                keep = (labels == i + 1) & (dets.scores >= self.thresholds[cls])
                part = dets.select(keep)
                parts.append(
                    Detections(
                        part.boxes,
                        part.scores,
                        np.full(len(part), classes.index(cls) + 1, np.int64),
                        masks=part.masks,
                    )
                )
            if self.supplies.get(HEAD) == member.name and self.heads is not None:
                person = member.classes.index(PERSON) + 1
                keep = (labels == person) & (dets.scores >= self.thresholds[HEAD])
                parts.append(
                    head_detections(
                        dets.select(keep),
                        self.heads,
                        member.keypoint_names,
                        classes.index(HEAD) + 1,
                    )
                )
        return Detections.concat(parts)


@dataclass(frozen=True)
class CompositeManifest:
    """What `composite.json` holds.

    name / version: the anonymizer's. members: per member, `folder` (its artifact folder,
    relative to the composite's), `name`, `version` and `manifest_sha256`. supplies, thresholds:
    as `Composition`'s. styles: per class of the anonymizer (`head` included), an
    `anonymize.Style` as a dict. heads: a `HeadSpec` as a dict (empty without heads). recall:
    the anonymizer's headline recall per reference set. gate / notice: the gate validate
    passed the anonymizer under, and its notice (the file's first line). files: file name ->
    sha256 of the composite's own files (the model card).
    """

    name: str
    version: str
    members: list[dict[str, str]]
    supplies: dict[str, str]
    thresholds: dict[str, float]
    styles: dict[str, dict[str, Any]]
    heads: dict[str, Any]
    gate: dict[str, Any]
    notice: str
    recall: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    created: str = ""
    kind: str = "composite"
    schema_version: int = COMPOSITE_SCHEMA

    def to_json(self) -> dict[str, Any]:
        """The manifest as written, `manifest_sha256` included."""
        body = asdict(self)
        return {**body, "manifest_sha256": manifest_digest(body)}

    def release_problems(self) -> list[str]:
        """What keeps the anonymizer's gate from being the release gate; empty when none."""
        return release_problems(Gate.from_dict(self.gate))

    @staticmethod
    def from_json(raw: Any, where: str) -> CompositeManifest:
        """The manifest of a parsed composite.json; ArtifactError when it is not one, was
        edited after export, or comes from a newer schema."""
        if not isinstance(raw, Mapping) or raw.get("kind") != "composite":
            raise ArtifactError(f"{where}: not an anonlab composite manifest (no kind composite)")
        body = manifest_body(
            raw,
            where,
            CompositeManifest,
            newest=COMPOSITE_SCHEMA,
            what="anonymizer",
            redo="the anonymizer",
        )
        manifest = CompositeManifest(**body)
        problems = _problems(manifest)
        if problems:
            raise ArtifactError(
                f"{where}: invalid manifest: {'; '.join(problems)}. Export again "
                "(`anonlab export`) instead of editing it"
            )
        return manifest


def _problems(m: CompositeManifest) -> list[str]:
    """Shape problems of a composite manifest; the members are checked when loaded."""
    out = []
    for key in ("name", "version"):
        if not (isinstance(getattr(m, key), str) and getattr(m, key).strip()):
            out.append(f"{key}: must be a non-empty string")
    objects = ("supplies", "thresholds", "styles", "heads", "gate", "recall", "provenance", "files")
    out += [f"{k}: must be a JSON object" for k in objects if not isinstance(getattr(m, k), dict)]
    if not (isinstance(m.members, list) and m.members):
        out.append("members: must be a non-empty list")
    else:
        for entry in m.members:
            if not (
                isinstance(entry, Mapping)
                and set(entry) == {"folder", "name", "version", "manifest_sha256"}
                and all(isinstance(v, str) and v for v in entry.values())
                and SHA256_HEX.fullmatch(entry["manifest_sha256"])
            ):
                out.append(
                    f"members: {entry!r} must hold folder, name, version and manifest_sha256"
                )
            elif Path(entry["folder"]).is_absolute() or ".." in Path(entry["folder"]).parts:
                out.append(f"members: folder {entry['folder']!r} leaves the anonymizer's folder")
    if out:
        return out
    for cls in m.supplies:
        if cls not in m.styles:
            out.append(f"styles: no style for {cls!r}")
            continue
        try:
            Style.from_dict(m.styles[cls])
        except (TypeError, ValueError) as exc:
            out.append(f"styles.{cls}: {exc}")
    for cls, value in m.thresholds.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            out.append(f"thresholds.{cls} = {value!r}: must be a number from 0 to 1")
    for name, sha in m.files.items():
        if not (isinstance(sha, str) and SHA256_HEX.fullmatch(sha)):
            out.append(f"files.{name}: must be the file's sha256")
    try:
        gate = Gate.from_dict(m.gate)
    except ValueError as exc:
        return [*out, f"gate: {exc}"]
    expected = release_notice(release_problems(gate))
    if m.notice != expected:
        out.append(f"notice = {m.notice!r}: must be the gate's notice, {expected!r}")
    return out


@dataclass(frozen=True)
class Composite:
    """A verified composite artifact: its manifest, that manifest's sha256 (what pins name),
    and its members, each verified (`load_artifact`), in the manifest's order."""

    path: Path
    manifest: CompositeManifest
    manifest_sha256: str
    members: tuple[Artifact, ...]

    def composition(self) -> Composition:
        """The rule the runtime applies (`Composition`), from the manifest."""
        m = self.manifest
        heads = HeadSpec.from_dict(m.heads) if HEAD in m.supplies else None
        return Composition(
            members=tuple(_member(a) for a in self.members),
            supplies=dict(m.supplies),
            thresholds={c: float(t) for c, t in m.thresholds.items()},
            heads=heads,
        )

    def styles(self) -> dict[str, Style]:
        return {c: Style.from_dict(s) for c, s in self.manifest.styles.items()}

    def identity(self) -> dict[str, Any]:
        """Which anonymizer this is, JSON-ready: name, version, manifest_sha256, release, and
        each member's identity."""
        return {
            "name": self.manifest.name,
            "version": self.manifest.version,
            "manifest_sha256": self.manifest_sha256,
            "release": not self.manifest.release_problems(),
            "members": [a.identity() for a in self.members],
        }


def _member(artifact: Artifact) -> Member:
    m = artifact.manifest
    return Member(
        name=m.name,
        classes=tuple(m.classes),
        kind=m.kind,
        keypoint_names=tuple(m.architecture.get("keypoint_names") or ()),
    )


def is_composite(path: str | Path) -> bool:
    """Whether `path` is a composite artifact's folder (it holds composite.json)."""
    return (Path(path) / COMPOSITE).is_file()


def load_composite(path: str | Path) -> Composite:
    """The composite artifact at `path`: its manifest checked, its files' and every member's
    checksums verified, its members loaded (`load_artifact`) and found to be the ones it names
    (manifest_sha256), its supplies, thresholds and heads found runnable by them. ArtifactError
    naming the folder and what is wrong otherwise."""
    folder = Path(path)
    manifest_path = folder / COMPOSITE
    try:
        raw = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{folder}: no {COMPOSITE}; not an exported anonymizer") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{manifest_path}: not readable JSON ({exc})") from None
    manifest = CompositeManifest.from_json(raw, str(manifest_path))
    verify_files(folder, manifest_path, manifest.files, what="anonymizer")
    members = []
    for entry in manifest.members:
        artifact = load_artifact(folder / entry["folder"])
        if artifact.manifest_sha256 != entry["manifest_sha256"]:
            raise ArtifactError(
                f"{folder}: member {entry['folder']} has manifest_sha256 "
                f"{artifact.manifest_sha256[:12]}..., the anonymizer names "
                f"{entry['manifest_sha256'][:12]}...: not the member it was exported with"
            )
        members.append(artifact)
    composite = Composite(folder, manifest, raw["manifest_sha256"], tuple(members))
    try:
        composition = composite.composition()
    except ValueError as exc:
        raise ArtifactError(f"{manifest_path}: {exc}") from None
    by_name = {a.manifest.name: a for a in members}
    for cls, name in composition.supplies.items():
        floor = by_name[name].manifest.score_floor
        if composition.thresholds[cls] < floor:
            raise ArtifactError(
                f"{manifest_path}: thresholds.{cls} {composition.thresholds[cls]} is below "
                f"{name}'s score_floor {floor}, under which it reports nothing"
            )
        member_style = by_name[name].manifest.styles.get(cls)
        if cls != HEAD and member_style != manifest.styles[cls]:
            raise ArtifactError(
                f"{manifest_path}: styles.{cls} is {manifest.styles[cls]}, but its member {name} "
                f"styles it as {member_style}; export again"
            )
    return composite
