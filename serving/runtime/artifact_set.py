"""The set of artifacts a deployment loads, whole or not at all.

`load_artifacts` loads a model set: the folders `artifact_folders` names (a folder of artifacts
must hold complete artifact folders and nothing else), each verified by `load_artifact`, then
held to what the deployment requires: every artifact passed the release gate its manifest
records (`gate`, see `serving.runtime.release`), unless the caller allows demo artifacts
(`--allow-demo`); between them the artifacts detect every required class
(default face and license_plate: a missed face is a legal incident), and, when pins are given,
every artifact is pinned and every pin is loaded. Pins given out-of-band
(`load_artifacts(pins=...)`, `anonlab blur --pin`, ANONLAB_ARTIFACT_SHA256) detect a swapped
artifact: an artifact runs only when its manifest_sha256, which covers the sha256 of every
file, is one of them. Anything less is an ArtifactError: the runtime never runs with part of
its models.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from serving.runtime.artifact import MANIFEST, SHA256_HEX, Artifact, load_artifact
from serving.runtime.composite import COMPOSITE, Composite, is_composite, load_composite
from serving.runtime.errors import ArtifactError

# The objects that identify people: a deployment hides them unless it says otherwise.
DEFAULT_REQUIRED_CLASSES = ("face", "license_plate")
REQUIRE_ENV = "ANONLAB_REQUIRE_CLASSES"
PINS_ENV = "ANONLAB_ARTIFACT_SHA256"

log = logging.getLogger(__name__)


def artifact_folders(paths: Sequence[str | Path]) -> list[Path]:
    """The artifact folders `paths` name, in order. A path is an artifact folder (it has a
    manifest.json; a path that is not a folder is passed on for `load_artifact` to refuse), or a
    folder of artifacts such as artifacts/serving/: every entry in it must be an artifact folder.

    ArtifactError naming every other entry of a folder of artifacts: a folder without
    manifest.json (a half-finished copy), a hidden entry even with a manifest (`.x.staging`, or
    rsync's `.x.AbC123`: an interrupted export or copy), a file (perhaps a model still packed in
    an archive). Loading the rest would run without a model the deployment counts on.
    """
    out: list[Path] = []
    for path in map(Path, paths):
        try:
            if path.is_dir() and not (path / MANIFEST).exists():
                out += _folder_of_artifacts(path)
            else:
                out.append(path)
        except OSError as exc:
            raise ArtifactError(f"{path}: cannot be read ({exc})") from None
    return out


def _folder_of_artifacts(folder: Path) -> list[Path]:
    entries = sorted(folder.iterdir())
    found = [
        e
        for e in entries
        if not e.name.startswith(".") and (e / MANIFEST).is_file() and not is_composite(e)
    ]
    # A folder holding an anonymizer is refused below, saying to name the anonymizer on its own.
    if not found and not any(is_composite(e) for e in entries):
        held = ", ".join(e.name for e in entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise ArtifactError(
            f"{folder}: no {MANIFEST}; this is not an exported artifact (`anonlab export` "
            "writes them), nor a folder of them ("
            + (f"none of its entries has one: {held})" if entries else "it is empty)")
        )
    rejected = [
        f"{e.name}{'/' if e.is_dir() else ''} ({_not_an_artifact(e)})"
        for e in entries
        if e not in found
    ]
    if rejected:
        raise ArtifactError(
            f"{folder}: a folder of artifacts is loaded whole or not at all, and these entries "
            f"in it are not artifact folders: {'; '.join(rejected)}. Finish copying or remove "
            "them, or name each artifact folder on its own (--model DIR)"
        )
    return found


def _not_an_artifact(entry: Path) -> str:
    if entry.name.startswith("."):
        return "hidden: left by an interrupted export or copy?"
    if is_composite(entry):
        return "an anonymizer: name it on its own, --model DIR, to run it"
    if not entry.is_dir():
        return "a file"
    return f"no {MANIFEST}: a half-finished copy?"


def required_classes(
    given: Sequence[str] | None, environ: Mapping[str, str] | None = None
) -> tuple[str, ...]:
    """The classes a deployment requires its models to detect: `given` (each item a class or a
    comma-separated list of them), else `environ`'s ANONLAB_REQUIRE_CLASSES when set and not
    empty, else DEFAULT_REQUIRED_CLASSES. ArtifactError when that names no class."""
    if given is None:
        text = (environ or {}).get(REQUIRE_ENV, "").strip()
        if not text:
            return DEFAULT_REQUIRED_CLASSES
        given, source = [text], REQUIRE_ENV
    else:
        source = "--require"
    names = tuple(dict.fromkeys(_items(given)))
    if not names:
        raise ArtifactError(
            f"{source} {','.join(given)!r} names no class; name the classes the loaded models "
            f"must detect, such as {','.join(DEFAULT_REQUIRED_CLASSES)}"
        )
    return names


def manifest_pins(
    given: Sequence[str] | None, environ: Mapping[str, str] | None = None
) -> tuple[str, ...]:
    """The manifest_sha256 values a deployment pins: `given` (each item a sha256 or a
    comma-separated list), else `environ`'s ANONLAB_ARTIFACT_SHA256 when set; () when neither
    (nothing pinned). ArtifactError for a pin that is not 64 hex digits."""
    if given is None:
        given, source = [(environ or {}).get(PINS_ENV, "")], PINS_ENV
    else:
        source = "--pin"
    pins = tuple(dict.fromkeys(item.lower() for item in _items(given)))
    bad = [p for p in pins if not SHA256_HEX.fullmatch(p)]
    if bad:
        raise ArtifactError(
            f"{source}: {', '.join(map(repr, bad))} is not a manifest_sha256 (64 hex digits); "
            f"pin the manifest_sha256 written in each artifact's {MANIFEST}"
        )
    return pins


def _items(values: Sequence[str]) -> list[str]:
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def load_artifacts(
    paths: Sequence[str | Path],
    *,
    require: Sequence[str] | None = None,
    pins: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    allow_demo: bool = False,
) -> list[Artifact]:
    """The model set `paths` name (`artifact_folders`), every artifact verified
    (`load_artifact`), held to what the deployment requires: every artifact passed the release
    gate (`Manifest.release_problems`) unless `allow_demo` (then each one that did not is
    logged as a warning), between them the artifacts detect every class of
    `required_classes(require, environ)`, and when `manifest_pins(pins, environ)` pins any,
    every artifact's manifest_sha256 is pinned and every pin is loaded.

    ArtifactError otherwise, naming what is missing and what was loaded: nothing loads unless
    all of it does.
    """
    required = required_classes(require, environ)
    pinned = manifest_pins(pins, environ)
    folders = artifact_folders(paths)
    if not folders:
        raise ArtifactError("no artifact folder given (`anonlab export` writes them)")
    artifacts = [load_artifact(f) for f in folders]
    _held_to_release(artifacts, allow_demo)
    if pinned:
        unpinned = [
            f"{a.path} (manifest_sha256 {a.manifest_sha256}) is not pinned"
            for a in artifacts
            if a.manifest_sha256 not in pinned
        ]
        loaded = {a.manifest_sha256 for a in artifacts}
        unloaded = [f"pin {p} matches no loaded artifact" for p in pinned if p not in loaded]
        if unpinned or unloaded:
            raise ArtifactError(
                f"the artifacts are not the pinned ones: {'; '.join(unpinned + unloaded)}. Load "
                f"exactly the pinned artifacts, or pin those you mean to run (--pin, {PINS_ENV})"
            )
    detected = {c for a in artifacts for c in a.manifest.classes}
    missing = [c for c in required if c not in detected]
    if missing:
        held = "; ".join(f"{a.path}: {', '.join(a.manifest.classes)}" for a in artifacts)
        raise ArtifactError(
            f"no loaded model detects {', '.join(missing)}, which this deployment requires "
            f"(required: {', '.join(required)}; loaded: {held}). Add a model that detects "
            f"{'it' if len(missing) == 1 else 'them'} (--model), or name the classes this "
            f"deployment requires (--require, {REQUIRE_ENV}; default "
            f"{','.join(DEFAULT_REQUIRED_CLASSES)})"
        )
    return artifacts


def _held_to_release(artifacts: Sequence[Artifact | Composite], allow_demo: bool) -> None:
    """ArtifactError naming each artifact (or anonymizer) that passed only a gate weaker than
    the release gate, and why, unless `allow_demo`; then a warning for each."""
    weak = [(a, a.manifest.release_problems()) for a in artifacts]
    weak = [(a, problems) for a, problems in weak if problems]
    for a, problems in weak if allow_demo else []:
        log.warning(
            "running %s version %s (%s), which is NOT A RELEASE: %s",
            a.manifest.name,
            a.manifest.version,
            a.path,
            "; ".join(problems),
        )
    if weak and not allow_demo:
        listed = " | ".join(
            f"{a.path} ({a.manifest.name} version {a.manifest.version}): {'; '.join(problems)}"
            for a, problems in weak
        )
        raise ArtifactError(
            f"not a release: {listed}. Its recall was proven only against a gate weaker than "
            "the release gate, so it may leave identifiable faces and plates in what it "
            "anonymizes. To run it anyway (a demo, a trial), pass --allow-demo (Python: "
            "allow_demo=True)"
        )


def load_composite_set(
    paths: Sequence[str | Path],
    *,
    require: Sequence[str] | None = None,
    pins: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    allow_demo: bool = False,
) -> Composite:
    """The composite artifact `paths` name (exactly one folder holding composite.json),
    verified with its members (`load_composite`), held to what the deployment requires like
    `load_artifacts`: it passed the release gate unless `allow_demo`, its classes (heads aside)
    include every required class, and when pins are given its manifest_sha256 (which covers
    its members') is pinned. ArtifactError otherwise."""
    required = required_classes(require, environ)
    pinned = manifest_pins(pins, environ)
    if len(paths) != 1:
        raise ArtifactError(
            f"an anonymizer ({COMPOSITE}) runs on its own: it names its member models itself; "
            f"got {len(paths)} model paths ({', '.join(map(str, paths))})"
        )
    composite = load_composite(paths[0])
    m = composite.manifest
    _held_to_release([composite], allow_demo)
    if pinned and pinned != (composite.manifest_sha256,):
        raise ArtifactError(
            f"the anonymizer is not the pinned one: {composite.path} has manifest_sha256 "
            f"{composite.manifest_sha256}, the pins are {', '.join(pinned)}. Pin the "
            f"manifest_sha256 of its {COMPOSITE} (--pin, {PINS_ENV})"
        )
    missing = [c for c in required if c not in m.supplies]
    if missing:
        raise ArtifactError(
            f"{composite.path}: the anonymizer hides {', '.join(m.supplies)}, not "
            f"{', '.join(missing)}, which this deployment requires (--require, {REQUIRE_ENV}; "
            f"default {','.join(DEFAULT_REQUIRED_CLASSES)})"
        )
    return composite
