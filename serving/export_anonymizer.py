"""The anonymizer's composite artifact: the exported member artifacts run as one, as evaluate
scored them and validate gated them (`serving.runtime.composite` says what the runtime makes of
it).

`export_anonymizer` writes `<name>-<version>/` (version: the members' versions joined with
`+`, in the order they run, e.g. `anonymizer-3+2`) beside the member artifacts:

- `members/<member folder>/`: a copy of each member's artifact folder, as exported;
- `MODEL_CARD.md` (`serving.anonymizer_card`): the gate's notice first, the members and what
  each hides, the thresholds (the head threshold included), the anonymizer's recall per set,
  class and size bucket with intervals, and the faces only the heads hid;
- `composite.json` (`CompositeManifest`, its notice on the first line): each member's folder,
  name, version and manifest_sha256; the supplies, thresholds, styles and head geometry of
  metrics.json's `anonymizer` entry (what evaluate ran); its headline recall per set; the gate
  validate passed it under; provenance; the sha256 of the card.

The folder is loaded back with `load_composite` before export returns, so an anonymizer the
runtime would refuse is never published. `anonymizer_entry` is the check before anything is
written: metrics.json holds the anonymizer, and its members ran the weights validate passed.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from data.atomic import write_text
from data.errors import AnonlabError
from evaluation.anonymizer import ANONYMIZER
from serving.anonymizer_card import render_anonymizer_card
from serving.runtime.artifact import load_artifact
from serving.runtime.checksum import file_sha256
from serving.runtime.composite import COMPOSITE, MEMBERS, CompositeManifest, load_composite
from serving.runtime.errors import ArtifactError
from serving.runtime.release import Gate, headed_json, release_notice, release_problems

__all__ = ["anonymizer_entry", "export_anonymizer"]

log = logging.getLogger(__name__)

CARD = "MODEL_CARD.md"
AGAIN = "run `anonlab evaluate` and `anonlab validate` again. Nothing was exported"


def anonymizer_entry(
    metrics: Mapping[str, Any], validated: Mapping[str, str], where: Path
) -> Mapping[str, Any]:
    """metrics.json's (`where`) anonymizer entry, once each of its members is found to be a
    model whose validated weights (`validated`: model -> sha256 the verdict names) are those
    the anonymizer ran; AnonlabError naming both sha256s otherwise, or when there is no entry
    (an older evaluate) or it names no members."""
    entry = metrics.get(ANONYMIZER)
    if not isinstance(entry, Mapping):
        raise AnonlabError(
            f"{where} has no `{ANONYMIZER}` entry (written by an older evaluate): what ships is "
            f"the models run as one, and it was not evaluated; {AGAIN}"
        )
    members = entry.get("members")
    if not (isinstance(members, Mapping) and members):
        raise AnonlabError(f"{where}: `{ANONYMIZER}.members` names no models; {AGAIN}")
    for model, member in members.items():
        ran = member.get("weights_sha256") if isinstance(member, Mapping) else None
        if model not in validated:
            raise AnonlabError(
                f"{where}: the anonymizer's member {model} is not a validated model "
                f"({', '.join(validated)}); {AGAIN}"
            )
        if ran != validated[model]:
            raise AnonlabError(
                f"{where}: the anonymizer ran {model} with weights sha256 {ran}, but the weights "
                f"validate passed have sha256 {validated[model]}; {AGAIN}"
            )
    return entry


def export_anonymizer(
    name: str,
    entry: Mapping[str, Any],
    members: Sequence[Path],
    out: Path,
    *,
    recall: Mapping[str, Any],
    provenance: Mapping[str, Any],
    gate: Gate,
) -> Path:
    """Write the anonymizer `name` (`entry`: metrics.json's `anonymizer`) made of the exported
    artifact folders `members` (in the order it runs them) into a new folder under `out`; that
    folder, once `load_composite` loads it. `recall`: its headline recall per set, as a member
    manifest's; `gate`: the gate validate passed it under. AnonlabError when the entry lacks
    what the manifest needs, or the runtime would refuse the result."""
    artifacts = [load_artifact(folder) for folder in members]
    version = "+".join(a.manifest.version for a in artifacts)
    folder = out / f"{name}-{version}"
    (folder / MEMBERS).mkdir(parents=True)
    listed = []
    for source, artifact in zip(members, artifacts, strict=True):
        copy = Path(MEMBERS) / source.name
        shutil.copytree(source, folder / copy)
        m = artifact.manifest
        listed.append(
            {
                "folder": copy.as_posix(),
                "name": m.name,
                "version": m.version,
                "manifest_sha256": artifact.manifest_sha256,
            }
        )
    write_text(
        folder / CARD,
        render_anonymizer_card(
            name=name,
            version=version,
            members=[
                (a.manifest.name, a.manifest.version, a.manifest.kind, item["folder"])
                for a, item in zip(artifacts, listed, strict=True)
            ],
            entry=entry,
            gate=gate,
        ),
    )
    manifest = CompositeManifest(
        name=name,
        version=version,
        members=listed,
        supplies={str(c): str(m) for c, m in (entry.get("supplies") or {}).items()},
        thresholds=_thresholds(entry),
        styles={str(c): dict(s) for c, s in (entry.get("styles") or {}).items()},
        heads=dict(entry.get("heads") or {}),
        gate=gate.to_dict(),
        notice=release_notice(release_problems(gate)),
        recall=dict(recall),
        provenance=dict(provenance),
        files={CARD: file_sha256(folder / CARD)},
        created=str(provenance.get("validated") or ""),
    )
    write_text(folder / COMPOSITE, headed_json(manifest.to_json(), "notice"))
    # The runtime refuses an anonymizer it cannot run safely: better to fail here than there.
    try:
        load_composite(folder)
    except ArtifactError as exc:
        raise AnonlabError(
            f"{name}: the runtime would refuse this anonymizer: {exc}. Check "
            f"artifacts/eval/metrics.json's `{ANONYMIZER}` entry (supplies, thresholds, styles, "
            f"heads) against export.styles; {AGAIN}"
        ) from None
    log.info("%s: exported version %s as %s", name, version, folder.name)
    return folder


def _thresholds(entry: Mapping[str, Any]) -> dict[str, float]:
    """Per class (and `head`), the operating threshold evaluate chose and ran."""
    chosen = entry.get("thresholds") or {}
    out = {}
    for cls in entry.get("supplies") or {}:
        value = (chosen.get(cls) or {}).get("threshold")
        if value is None:
            raise AnonlabError(
                f"artifacts/eval/metrics.json: `{ANONYMIZER}.thresholds` has no threshold for "
                f"{cls}, which it supplies; {AGAIN}"
            )
        out[str(cls)] = float(value)
    return out
