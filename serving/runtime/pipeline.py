"""The runtime's core: exported artifacts loaded once, then image in, anonymized image out.

`Runtime.load` loads the model set whole (`artifact_set.load_artifacts`: every artifact verified,
the classes the deployment requires detected, pins matched) and starts each detector
(onnxruntime by default, or PyTorch from the safetensors weights). `Runtime.anonymize_bytes`
does one image file: decode (`imagefile`), turn it upright as a viewer shows it (so faces are
upright for the detector), detect on tiles (`tiles.detect_tiled`, the artifact's tiling, the
panorama seam wrapped), keep the detections at or above each class's operating threshold, hide
them (`anonymize`, each class as its artifact's manifest says), turn it back to the stored
orientation and encode it as the same kind of file with the same metadata.

A composite artifact (`serving.runtime.composite`: what export writes as the anonymizer) runs its
member models as one: each class from the member that supplies it, at the anonymizer's
thresholds, plus the head regions of the keypoint model's persons (`serving.runtime.heads`).
Several single artifacts named together also work together: every detector runs on every image
and everything any of them finds is hidden (a keypoint model's persons as boxes). Two artifacts
that style one class differently are refused.

Nothing is written to disk here and no pixel content is logged; any failure is an exception
(the caller writes no output for that image: see `batch` and `service`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from serving.runtime.anonymize import Style, anonymize, hidden_mask
from serving.runtime.artifact import Artifact
from serving.runtime.artifact_set import artifact_folders, load_artifacts, load_composite_set
from serving.runtime.backends import InputSize, OnnxDetector, TorchDetector
from serving.runtime.composite import Composite, is_composite
from serving.runtime.detections import Detections
from serving.runtime.errors import ArtifactError
from serving.runtime.imagefile import (
    ImageFile,
    detector_rgb,
    from_upright,
    read_image,
    upright,
    write_image,
)
from serving.runtime.imagefile.check import check_output
from serving.runtime.tiles import Detector, detect_tiled, is_panorama

__all__ = ["BACKENDS", "Anonymized", "Decoded", "Runtime", "artifact_folders"]

log = logging.getLogger(__name__)

BACKENDS = ("onnx", "torch")


@dataclass
class Anonymized:
    """One anonymized image: the encoded file, and what was hidden (upright pixel coordinates;
    `classes[label - 1]` names a detection's class)."""

    data: bytes
    detections: Detections
    classes: list[str]
    width: int
    height: int
    format: str
    panorama: bool = False
    # What of the input file's metadata was not written back, and why (`ImageFile.dropped`):
    # embedded thumbnails and previews, which would show what was hidden, for instance.
    dropped: tuple[str, ...] = ()
    # The share of the image's pixels that anonymizing changed (`Runtime.hidden_mask`); blur
    # measures it (one_image.finish_write), the HTTP service does not: None there.
    hidden_share: float | None = None

    def report(self) -> dict[str, Any]:
        """What was done to the image, JSON-ready: the blur sidecar and the service's JSON
        answer. Format, upright size, classes, detections, and the metadata not written back."""
        return {
            "format": self.format,
            "width": self.width,
            "height": self.height,
            "classes": list(self.classes),
            "detections": self.detections_json(),
            "metadata_dropped": list(self.dropped),
        }

    def detections_json(self) -> list[dict[str, Any]]:
        """The hidden detections as JSON-ready dicts: class, score, box [x0, y0, x1, y1] in the
        upright image's pixels (x1 beyond the width for a box across a panorama's seam), and
        keypoints [[x, y, score], ...] where the model gives them."""
        out = []
        for i in range(len(self.detections)):
            entry: dict[str, Any] = {
                "class": self.classes[int(self.detections.labels[i]) - 1],
                "score": round(float(self.detections.scores[i]), 4),
                "box": [round(float(v), 1) for v in self.detections.boxes[i]],
            }
            if self.detections.keypoints is not None:
                entry["keypoints"] = np.round(self.detections.keypoints[i], 2).tolist()
            out.append(entry)
        return out


# The torch backend's windows per call on a GPU, unless told otherwise.
GPU_BATCH = 8


class Runtime:
    """Loaded artifacts and their detectors; `anonymize_bytes` does one image."""

    def __init__(
        self,
        artifacts: Sequence[Artifact],
        detectors: Sequence[Detector],
        *,
        max_pixels: int | None = None,
        composite: Composite | None = None,
    ) -> None:
        if not artifacts or len(artifacts) != len(detectors):
            raise ValueError("a runtime needs at least one artifact, with one detector each")
        self.artifacts = list(artifacts)
        self.detectors = list(detectors)
        self.max_pixels = max_pixels
        self.composite = composite
        self.classes: list[str] = []
        self.styles: dict[str, Style] = {}
        self._labels: list[np.ndarray] = []  # per artifact: its label -> runtime label
        self._thresholds: list[np.ndarray] = []  # per artifact: its label -> threshold
        if composite is not None:
            if [a.manifest_sha256 for a in composite.members] != [
                a.manifest_sha256 for a in self.artifacts
            ]:
                raise ValueError("a composite runtime runs exactly the composite's members")
            self.composition = composite.composition()
            self.classes = self.composition.classes
            self.styles = composite.styles()
            return
        for artifact in self.artifacts:
            m = artifact.manifest
            for cls in m.classes:
                style = Style.from_dict(m.styles[cls])
                if cls in self.styles and self.styles[cls] != style:
                    raise ArtifactError(
                        f"{artifact.path}: styles {cls} as {m.styles[cls]}, but another loaded "
                        f"artifact styles it as {self.styles[cls].to_dict()}; load artifacts "
                        "that agree"
                    )
                self.styles[cls] = style
                if cls not in self.classes:
                    self.classes.append(cls)
            self._labels.append(np.array([0] + [self.classes.index(c) + 1 for c in m.classes]))
            self._thresholds.append(np.array([np.inf] + [m.thresholds[c] for c in m.classes]))

    @classmethod
    def load(
        cls,
        paths: Sequence[str | Path],
        *,
        backend: str = "onnx",
        device: str = "auto",
        threads: int = 0,
        batch: int | None = None,
        precision: str = "fp32",
        concurrent: int = 1,
        max_pixels: int | None = None,
        require: Sequence[str] | None = None,
        pins: Sequence[str] | None = None,
        environ: Mapping[str, str] | None = None,
        allow_demo: bool = False,
    ) -> Runtime:
        """Verify and load the artifacts at `paths` with `backend` (onnx: onnxruntime, CUDA
        where it has it; torch: PyTorch from weights.safetensors on `device`).

        batch: windows per call of a network. With onnx, each graph takes the batch it was
        exported at (its manifest's `batch`), and another value is refused; with torch, any
        (default: 8 on a GPU, 1 on the CPU, where batching did not pay on the demo's models:
        BENCHMARKS.md). precision: fp32, or bf16 (torch only: bfloat16 autocast). concurrent:
        batches of an image's windows in the network at once (on CPUs, with threads 0, each
        onnx call then gets an equal share of the cores).

        The model set loads whole or not at all (`artifact_set.load_artifacts`): `require`, the
        classes its models must detect between them (default: `environ`'s
        ANONLAB_REQUIRE_CLASSES, else face and license_plate), and `pins`, the manifest_sha256
        of every artifact to run (default: `environ`'s ANONLAB_ARTIFACT_SHA256, else none).
        `environ` (the command line passes os.environ) is read only where these are None.
        An artifact that passed only a gate weaker than the release gate (its manifest says NOT
        A RELEASE) is refused unless `allow_demo`.
        Each artifact loaded is logged at INFO: name, version, and the first 12 hex digits of
        its weights' sha256 and of its manifest_sha256.
        """
        if backend not in BACKENDS:
            raise ArtifactError(f"backend {backend!r}: use one of {', '.join(BACKENDS)}")
        artifacts, composite = cls.verify(
            paths, require=require, pins=pins, environ=environ, allow_demo=allow_demo
        )
        if backend == "onnx" and precision != "fp32":
            raise ArtifactError(
                f"precision {precision}: the onnx backend runs the exported fp32 graph; "
                "use --backend torch for bf16"
            )
        detectors = [
            _detector(
                a, backend, device, threads, batch=batch, precision=precision, concurrent=concurrent
            )
            for a in artifacts
        ]
        runtime = cls(artifacts, detectors, max_pixels=max_pixels, composite=composite)
        for a in artifacts:
            log.info(
                "loaded %s version %s (weights sha256 %s..., manifest_sha256 %s...) from %s",
                a.manifest.name,
                a.manifest.version,
                a.manifest.weights_sha256[:12],
                a.manifest_sha256[:12],
                a.path,
            )
        return runtime

    @staticmethod
    def verify(
        paths: Sequence[str | Path],
        *,
        require: Sequence[str] | None = None,
        pins: Sequence[str] | None = None,
        environ: Mapping[str, str] | None = None,
        allow_demo: bool = False,
    ) -> tuple[list[Artifact], Any]:
        """The artifacts at `paths` verified as `load` verifies them (and the anonymizer, or
        None), without loading a network: what an engine checks before it starts workers that
        load them."""
        composite = None
        if any(is_composite(p) for p in paths):
            composite = load_composite_set(
                paths, require=require, pins=pins, environ=environ, allow_demo=allow_demo
            )
            artifacts = list(composite.members)
            log.info(
                "loaded anonymizer %s version %s (manifest_sha256 %s...) from %s",
                composite.manifest.name,
                composite.manifest.version,
                composite.manifest_sha256[:12],
                composite.path,
            )
        else:
            artifacts = load_artifacts(
                paths, require=require, pins=pins, environ=environ, allow_demo=allow_demo
            )
        return artifacts, composite

    def detect(self, rgb: np.ndarray) -> Detections:
        """What every artifact finds in an upright (H, W, 3) uint8 RGB image at or above its
        class's operating threshold, labels into `classes`; with a composite, its rule
        (`Composition.combine`: each class from its supplier, and the heads)."""
        if self.composite is not None:
            return self.composition.combine(
                [
                    detect_tiled(rgb, detector, artifact.manifest.tiling_spec)
                    for artifact, detector in zip(self.artifacts, self.detectors, strict=True)
                ]
            )
        found = []
        for artifact, detector, labels, thresholds in zip(
            self.artifacts, self.detectors, self._labels, self._thresholds, strict=True
        ):
            dets = detect_tiled(rgb, detector, artifact.manifest.tiling_spec)
            dets = dets.select(dets.scores >= thresholds[dets.labels])
            dets.labels = labels[dets.labels]
            found.append(dets)
        if len(found) == 1:
            return found[0]
        if any(d.keypoints is not None for d in found):
            found = [_no_keypoints(d) for d in found]
        return Detections.concat(found)

    def anonymize_bytes(self, data: bytes) -> Anonymized:
        """Decode, detect, hide and encode one image file; raises on any failure."""
        decoded = self.decode(data)
        return self.finish(decoded, self.detect(decoded.rgb))

    def decode(self, data: bytes) -> Decoded:
        """Step 1 of `anonymize_bytes`: the file decoded, upright, and the detector's view."""
        image = read_image(data, max_pixels=self.max_pixels)
        view = upright(image.pixels, image.orientation)
        return Decoded(image, view, detector_rgb(view))

    def finish(self, decoded: Decoded, dets: Detections) -> Anonymized:
        """Step 3 of `anonymize_bytes` (after `detect`): hide `dets`, encode the file, and check
        that the encoded file holds no picture but its own (`imagefile.check`)."""
        height, width = decoded.view.shape[:2]
        panorama = self.is_panorama(width, height)
        # In place: the decoded pixels are not needed afterwards, and a panorama is 96 MB.
        hidden = anonymize(
            decoded.view, dets, self.classes, self.styles, panorama=panorama, inplace=True
        )
        image = decoded.image
        data = write_image(image, from_upright(hidden, image.orientation))
        check_output(data, image.format)
        return Anonymized(
            data=data,
            detections=dets,
            classes=self.classes,
            width=width,
            height=height,
            format=image.format,
            panorama=panorama,
            dropped=image.dropped,
        )

    def thresholds(self) -> dict[str, dict[str, float]]:
        """Per model that runs (the anonymizer, for a composite), the score from which each of
        its classes is hidden (a composite's `head` included)."""
        if self.composite is not None:
            return {self.composite.manifest.name: dict(self.composition.thresholds)}
        return {a.manifest.name: dict(a.manifest.thresholds) for a in self.artifacts}

    def identity(self) -> list[dict[str, Any]]:
        """What runs, JSON-ready: the composite's identity (members included), or each
        artifact's (`Artifact.identity`)."""
        if self.composite is not None:
            return [self.composite.identity()]
        return [a.identity() for a in self.artifacts]

    def is_panorama(self, width: int, height: int) -> bool:
        """Whether the tiling treats an upright image of this size as a 360-degree panorama
        (then hidden regions also wrap around its left-right seam)."""
        return any(is_panorama(width, height, a.manifest.tiling_spec) for a in self.artifacts)

    def hidden_mask(self, done: Anonymized, *, full: bool = False) -> np.ndarray:
        """(height, width) bool, upright: the pixels that anonymizing `done` changed (with
        `full`: hid fully, the soft edges of ellipses left out)."""
        return hidden_mask(
            done.width,
            done.height,
            done.detections,
            self.classes,
            self.styles,
            panorama=done.panorama,
            full=full,
        )


@dataclass
class Decoded:
    """A decoded image file: the file, its pixels upright, and those as uint8 RGB."""

    image: ImageFile
    view: np.ndarray
    rgb: np.ndarray


def _no_keypoints(dets: Detections) -> Detections:
    """`dets` without keypoints, so that detections of models with and without them can be
    concatenated. With several artifacts loaded, keypoints are dropped: hiding does not use
    them, and the sidecar then lists boxes only."""
    return Detections(dets.boxes, dets.scores, dets.labels, masks=dets.masks)


def _detector(
    artifact: Artifact,
    backend: str,
    device: str,
    threads: int,
    *,
    batch: int | None = None,
    precision: str = "fp32",
    concurrent: int = 1,
) -> Detector:
    m = artifact.manifest
    size = InputSize(m.input_size, int(m.architecture["min_size"]), int(m.architecture["max_size"]))
    options = {"size": size, "mask_threshold": m.mask_threshold}
    if backend == "onnx":
        if batch is not None and batch != m.batch:
            raise ArtifactError(
                f"{artifact.path}: its ONNX graph takes batches of {m.batch} windows "
                f"(manifest batch), not {batch}: export it again with export.batch={batch}, "
                "or use --backend torch, which takes any batch"
            )
        providers = ["CPUExecutionProvider"] if device == "cpu" else None
        return OnnxDetector(
            artifact.file("model.onnx"),
            kind=m.kind,
            batch=m.batch,
            providers=providers,
            threads=threads,
            concurrent=concurrent,
            **options,
        )
    import torch
    from safetensors.torch import load_file

    from serving.runtime.architecture import Architecture, DetectorCore, build

    try:
        arch = Architecture.from_dict(m.architecture)
    except (TypeError, ValueError) as exc:
        raise ArtifactError(
            f"{artifact.path}: invalid architecture in the manifest ({exc})"
        ) from None
    model = build(arch)
    model.load_state_dict(load_file(str(artifact.file("weights.safetensors"))), strict=True)
    if threads:
        torch.set_num_threads(threads)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if batch is None:
        batch = GPU_BATCH if torch.device(device).type == "cuda" else 1
    core = DetectorCore(model, score_threshold=m.score_floor)
    return TorchDetector(
        core, device=device, batch=batch, precision=precision, concurrent=concurrent, **options
    )
