"""Running an exported model on tiles: onnxruntime or PyTorch, the same detections from both.

Both backends take the runtime's tiles (HxWx3 uint8 RGB, at most `tile` x `tile`) and return
one `Detections` per tile in tile pixels, so `tiles.detect_tiled` drives either. Each tile is
prepared the same way for both (`to_canvas`): resized as torchvision resizes a model's input,
so the network sees objects at the scale it was trained at (the short side to the model's
min_size, the long side at most max_size), and placed at the top left of a fixed
`canvas` x `canvas` input, the size the ONNX graph was traced at, padded with the mean colour
(what torchvision's batching pads with, after normalisation). The canvas is
max(min_size, tile) rounded up to a multiple of 32, so every whole window of a tiled image fits
at torchvision's scale; only a window cut from an image narrower than the tile that torchvision
would enlarge past the canvas is enlarged less (`InputSize.scale`). The network's outputs are
mapped back by `to_detections`: boxes and keypoints divided by that scale and clipped to the
tile, and each mask probability map (28 x 28 over its box) resampled over the box's own
`mask_window` only and thresholded; pasting every mask over the whole input, as torchvision
does, would cost more than the network on a CPU.

Tiles go through the network in batches (`batch` canvases per call; the ONNX graph takes the
fixed batch it was exported at, a short last batch is padded with blank canvases). Called with
an iterable (`stream`), a backend cuts and prepares the next batch on one background thread and
pastes the masks of the last one on another while the network runs, so the device does not sit
idle waiting for the CPU work around it.

`OnnxDetector` needs only onnxruntime and numpy. `TorchDetector` needs torch and torchvision
and builds the network from the artifact's `Architecture` (see `architecture.py`).
"""

from __future__ import annotations

import collections
import math
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from serving.runtime.detections import Detections, mask_windows
from serving.runtime.errors import ArtifactError

__all__ = [
    "PRECISIONS",
    "InputSize",
    "OnnxDetector",
    "Parity",
    "TorchDetector",
    "compare",
    "to_canvas",
    "to_detections",
]

# Zero padding pixels of torchvision's mask paste: the M x M map is extended by one empty pixel
# on each side, and its box by the same proportion, so that mask edges fade out past the box.
_MASK_PAD = 1


# What `TorchDetector` computes in: float32, or bfloat16 autocast.
PRECISIONS = ("fp32", "bf16")

# torchvision's default normalisation mean (every model here uses it): padding with it is padding
# with zeros after normalisation, as torchvision's batching does.
_PAD_RGB = np.array([0.485, 0.456, 0.406], np.float32)


@dataclass(frozen=True)
class InputSize:
    """How a tile becomes the network's fixed input: resized by `scale`, on a `canvas` square."""

    canvas: int
    min_size: int
    max_size: int

    @staticmethod
    def of(min_size: int, max_size: int, tile: int) -> InputSize:
        """The input of a model (min_size, max_size) under a tiling of `tile` px windows."""
        canvas = -(-max(min_size, tile) // 32) * 32
        return InputSize(canvas, min_size, max_size)

    def scale(self, width: int, height: int) -> float:
        """torchvision's resize factor for a width x height tile, capped to fit the canvas."""
        short, long = min(width, height), max(width, height)
        return min(self.min_size / short, self.max_size / long, self.canvas / long)


def to_canvas(tile: np.ndarray, size: InputSize) -> tuple[np.ndarray, float]:
    """The network's input for `tile`: (3, S, S) float32 in [0, 1] (S = `size.canvas`), and the
    scale the tile was resized by."""
    if tile.ndim != 3 or tile.shape[2] != 3 or tile.dtype != np.uint8:
        raise ValueError(f"a tile is (H, W, 3) uint8 RGB, got {tile.shape} {tile.dtype}")
    height, width = tile.shape[:2]
    scale = size.scale(width, height)
    w = min(round(width * scale), size.canvas)
    h = min(round(height * scale), size.canvas)
    resized = tile if (w, h) == (width, height) else cv2.resize(tile, (w, h), cv2.INTER_LINEAR)
    canvas = np.empty((3, size.canvas, size.canvas), np.float32)
    canvas[:] = _PAD_RGB[:, None, None]
    canvas[:, :h, :w] = resized.transpose(2, 0, 1) * np.float32(1 / 255)
    return canvas, scale


def to_detections(
    outputs: Sequence[np.ndarray],
    *,
    kind: str,
    scale: float,
    width: int,
    height: int,
    mask_threshold: float,
) -> Detections:
    """The network's outputs (boxes, scores, labels, masks or keypoints; input pixels) as
    `Detections` in the pixels of a `width` x `height` tile."""
    boxes, scores, labels, extra = (np.asarray(o) for o in outputs)
    boxes = boxes.astype(np.float32).reshape(-1, 4) / np.float32(scale)
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
    # A box that lies wholly in the padding has nothing left of it in the tile.
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    if kind == "keypointrcnn" and extra.shape[1] == 0:  # DetectorCore(keypoints=False)
        return Detections(boxes, scores, labels)
    extra = extra[keep]
    if kind == "keypointrcnn":
        keypoints = extra.astype(np.float32).copy()
        keypoints[..., :2] /= np.float32(scale)
        return Detections(boxes, scores, labels, keypoints=keypoints)
    masks = [
        _paste(prob, box, window, mask_threshold)
        for prob, box, window in zip(extra, boxes, mask_windows(boxes), strict=True)
    ]
    return Detections(boxes, scores, labels, masks=masks)


def _paste(prob: np.ndarray, box: np.ndarray, window: np.ndarray, threshold: float) -> np.ndarray:
    """The mask of one detection over its `mask_window`: `prob` (M x M over the box, with
    torchvision's one-pixel empty border) resampled bilinearly and thresholded."""
    m = prob.shape[0]
    padded = np.zeros((m + 2 * _MASK_PAD, m + 2 * _MASK_PAD), np.float32)
    padded[_MASK_PAD:-_MASK_PAD, _MASK_PAD:-_MASK_PAD] = prob
    grow = (m + 2 * _MASK_PAD) / m
    x0, y0, x1, y1 = (float(v) for v in box)
    cx, cy, half_w, half_h = (
        (x0 + x1) / 2,
        (y0 + y1) / 2,
        (x1 - x0) * grow / 2,
        (y1 - y0) * grow / 2,
    )
    ix0, iy0, ix1, iy1 = (int(v) for v in window)
    # Destination pixel centre c + 0.5 (tile) -> source coordinate in the padded map.
    ax = padded.shape[1] / max(2 * half_w, 1e-6)
    ay = padded.shape[0] / max(2 * half_h, 1e-6)
    matrix = np.array(
        [
            [ax, 0.0, (ix0 + 0.5 - (cx - half_w)) * ax - 0.5],
            [0.0, ay, (iy0 + 0.5 - (cy - half_h)) * ay - 0.5],
        ]
    )
    sampled = cv2.warpAffine(
        padded,
        matrix,
        (ix1 - ix0, iy1 - iy0),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0.0,
    )
    return sampled >= threshold


# What the network runs on: a (batch, 3, S, S) input to its outputs as numpy arrays.
Forward = Callable[[np.ndarray], Sequence[np.ndarray]]
# Per tile of a batch: the scale it was resized by, its width and its height.
Shapes = list[tuple[float, int, int]]


@dataclass
class _Tiles:
    """What both backends share: tiles to a batch of canvases, the network's outputs of a batch
    back to `Detections` per tile, and the pipeline that overlaps the two with the network."""

    kind: str
    size: InputSize
    mask_threshold: float
    batch: int
    pad: bool  # whether the network takes exactly `batch` canvases (a traced ONNX graph)

    def prepare(self, tiles: Sequence[np.ndarray]) -> tuple[np.ndarray, Shapes]:
        """The (n, 3, S, S) input of up to `batch` tiles, with `pad` filled up with blank
        canvases (the mean colour, nothing to find) to n = batch; and per tile its scale, width
        and height."""
        if not 1 <= len(tiles) <= self.batch:
            raise ValueError(f"a batch holds 1 to {self.batch} tiles, got {len(tiles)}")
        side = self.size.canvas
        count = self.batch if self.pad else len(tiles)
        canvases = np.empty((count, 3, side, side), np.float32)
        shapes = []
        for i, tile in enumerate(tiles):
            canvases[i], scale = to_canvas(tile, self.size)
            shapes.append((scale, tile.shape[1], tile.shape[0]))
        canvases[len(tiles) :] = _PAD_RGB[:, None, None]
        return canvases, shapes

    def finish(self, outputs: Sequence[np.ndarray], shapes: Shapes) -> list[Detections]:
        """`Detections` per tile from the outputs of one batch (boxes, scores, labels, masks or
        keypoints, and the image index of each detection; a graph of one image has no index)."""
        image = np.asarray(outputs[4]) if len(outputs) > 4 else None
        found = []
        for i, (scale, width, height) in enumerate(shapes):
            own = outputs[:4] if image is None else [np.asarray(o)[image == i] for o in outputs[:4]]
            found.append(
                to_detections(
                    own,
                    kind=self.kind,
                    scale=scale,
                    width=width,
                    height=height,
                    mask_threshold=self.mask_threshold,
                )
            )
        return found

    def run(self, tiles: Sequence[np.ndarray], forward: Forward) -> list[Detections]:
        """Every tile, `batch` at a time, all on the calling thread."""
        out: list[Detections] = []
        for start in range(0, len(tiles), self.batch):
            canvases, shapes = self.prepare(tiles[start : start + self.batch])
            out += self.finish(forward(canvases), shapes)
        return out

    def stream(
        self, tiles: Iterable[np.ndarray], forward: Forward, concurrent: int = 1
    ) -> Iterator[Detections]:
        """`Detections` per tile, in order, as they come. Tiles are taken from `tiles` (cut
        there, lazily) and prepared on one background thread, the network runs `concurrent`
        batches at once on as many threads, and its outputs are turned into `Detections` (masks
        pasted) on one more, so the device does not wait on the CPU work around it. At most two
        prepared batches wait, so memory stays that of a few batches whatever the number of
        tiles. An error on any thread is raised here; closing the iterator early stops them."""
        ready: queue.Queue[Any] = queue.Queue(maxsize=2)
        stop = threading.Event()

        def produce() -> None:
            try:
                chunk: list[np.ndarray] = []
                for tile in tiles:
                    chunk.append(tile)
                    if len(chunk) == self.batch:
                        if not _put(ready, self.prepare(chunk), stop):
                            return
                        chunk = []
                if chunk and not _put(ready, self.prepare(chunk), stop):
                    return
                _put(ready, _DONE, stop)
            except BaseException as exc:  # handed to the consuming thread, which raises it
                _put(ready, _Failed(exc), stop)

        producer = threading.Thread(target=produce, name="anonlab-tiles", daemon=True)
        producer.start()
        running: collections.deque[tuple[Future[Sequence[np.ndarray]], Shapes]] = (
            collections.deque()
        )
        pasted: collections.deque[Future[list[Detections]]] = collections.deque()
        try:
            with (
                ThreadPoolExecutor(concurrent, thread_name_prefix="anonlab-network") as network,
                ThreadPoolExecutor(1, thread_name_prefix="anonlab-masks") as pasting,
            ):
                read_all = False
                while True:
                    while not read_all and len(running) < concurrent:
                        item = ready.get()
                        if item is _DONE:
                            read_all = True
                        elif isinstance(item, _Failed):
                            raise item.error
                        else:
                            canvases, shapes = item
                            running.append((network.submit(forward, canvases), shapes))
                    if not running:
                        break
                    outputs, shapes = running.popleft()
                    pasted.append(pasting.submit(self.finish, outputs.result(), shapes))
                    while len(pasted) > 1 or (pasted and pasted[0].done()):
                        yield from pasted.popleft().result()
                while pasted:
                    yield from pasted.popleft().result()
        finally:
            stop.set()
            for future in [*(f for f, _ in running), *pasted]:
                future.cancel()
            producer.join()


_DONE = object()


@dataclass(frozen=True)
class _Failed:
    error: BaseException


def usable_cpus() -> int:
    """The CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _put(ready: queue.Queue[Any], item: Any, stop: threading.Event) -> bool:
    """Put `item` on the queue; False (and the item dropped) once the consumer has stopped."""
    while not stop.is_set():
        try:
            ready.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


class OnnxDetector:
    """An exported `model.onnx` under onnxruntime: tiles in, `Detections` per tile out.

    The graph takes the fixed batch it was exported at (`Manifest.batch`; a graph of schema 1 or
    2 takes one (3, S, S) tile): tiles go through it that many at a time, the last batch padded.
    `batch`: what the manifest says, checked against the graph. providers: onnxruntime
    execution providers; default CUDA where the installed onnxruntime has it (the
    onnxruntime-gpu build), else CPU. concurrent: batches run at once when streaming (`stream`);
    with threads 0, each call then gets an equal share of the CPUs (at least one thread).
    """

    def __init__(
        self,
        path: Path,
        *,
        kind: str,
        size: InputSize,
        mask_threshold: float,
        batch: int = 1,
        providers: Sequence[str] | None = None,
        threads: int = 0,
        concurrent: int = 1,
    ) -> None:
        import onnxruntime as ort

        if concurrent < 1:
            raise ValueError(f"concurrent must be at least 1, got {concurrent}")
        self.concurrent = concurrent
        if threads == 0 and concurrent > 1:
            threads = max(1, usable_cpus() // concurrent)

        if providers is None:
            available = ort.get_available_providers()
            providers = [p for p in ("CUDAExecutionProvider",) if p in available]
            providers.append("CPUExecutionProvider")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3  # shape warnings of torchvision's graphs are noise
        try:
            self.session = ort.InferenceSession(str(path), options, providers=list(providers))
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ArtifactError(f"{path}: onnxruntime cannot load it ({exc})") from None
        graph_input = self.session.get_inputs()[0]
        self.input_name = graph_input.name
        shape = graph_input.shape
        # Schemas 1 and 2: one (3, S, S) tile per call, no image index among the outputs.
        self.single = len(shape) == 3
        graph_batch = 1 if self.single else shape[0]
        if graph_batch != batch:
            raise ArtifactError(
                f"{path}: the graph takes batches of {graph_batch} windows (input "
                f"{graph_input.name} {shape}), the manifest says {batch}; export the model again"
            )
        self._tiles = _Tiles(kind, size, mask_threshold, batch, pad=True)

    def _forward(self, canvases: np.ndarray) -> Sequence[np.ndarray]:
        feed = canvases[0] if self.single else canvases
        return self.session.run(None, {self.input_name: feed})

    def __call__(self, tiles: Sequence[np.ndarray]) -> list[Detections]:
        return self._tiles.run(tiles, self._forward)

    def stream(self, tiles: Iterable[np.ndarray]) -> Iterator[Detections]:
        """As `__call__`, with tile preparation and mask pasting on background threads and
        `concurrent` batches in the network at once."""
        return self._tiles.stream(tiles, self._forward, self.concurrent)


class TorchDetector:
    """The same network in PyTorch (a `DetectorCore`), on `device`: tiles in, `Detections` out.

    batch: tiles per call of the network (any number: the eager network has no fixed batch).
    precision: "fp32", or "bf16" to run it under bfloat16 autocast (for GPUs with bfloat16
    units; the operating thresholds were chosen on fp32 scores, so bf16 is an opt-in). On a
    CUDA device the input goes over from pinned memory without blocking. concurrent: batches
    run at once when streaming (PyTorch's CPU threads are shared by them: set them with
    `torch.set_num_threads`).
    """

    def __init__(
        self,
        core: Any,
        *,
        size: InputSize,
        mask_threshold: float,
        device: Any = "cpu",
        batch: int = 1,
        precision: str = "fp32",
        concurrent: int = 1,
    ) -> None:
        import torch

        if concurrent < 1:
            raise ValueError(f"concurrent must be at least 1, got {concurrent}")
        self.concurrent = concurrent
        if batch < 1:
            raise ValueError(f"batch must be at least 1, got {batch}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r}: use one of {', '.join(PRECISIONS)}")
        self.torch = torch
        self.device = torch.device(device)
        self.core = core.to(self.device).eval()
        self.precision = precision
        self._tiles = _Tiles(core.kind, size, mask_threshold, batch, pad=False)

    def _forward(self, canvases: np.ndarray) -> list[np.ndarray]:
        torch = self.torch
        images = torch.from_numpy(canvases)
        if self.device.type == "cuda":
            images = images.pin_memory().to(self.device, non_blocking=True)
        else:
            images = images.to(self.device)
        with (
            torch.inference_mode(),
            torch.autocast(
                self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"
            ),
        ):
            outputs = self.core(images)
        return [
            o.float().cpu().numpy() if o.is_floating_point() else o.cpu().numpy() for o in outputs
        ]

    def __call__(self, tiles: Sequence[np.ndarray]) -> list[Detections]:
        return self._tiles.run(tiles, self._forward)

    def stream(self, tiles: Iterable[np.ndarray]) -> Iterator[Detections]:
        """As `__call__`, with tile preparation and mask pasting on background threads and
        `concurrent` batches in the network at once."""
        return self._tiles.stream(tiles, self._forward, self.concurrent)


@dataclass(frozen=True)
class Parity:
    """How far two backends' detections of the same tiles are apart.

    Every detection scoring at least `floor` in one backend needs a partner in the other: same
    label, box IoU >= 0.5, paired greedily by IoU, among the other's detections scoring at least
    floor - slack (a score just over the floor on one side may be just under it on the other).
    unmatched: those without one. at_cap: detections without a partner only because the other
    backend's list of that tile was full (the network's `detections_per_image`) and its last
    kept score is within slack of theirs: two near-equal scores competing for the last place
    are ordered by float noise, so either backend may keep either (not counted in unmatched).
    max_box_px: the largest coordinate difference of a pair; max_score: the largest score
    difference; min_mask_iou: the lowest mask IoU of a pair (1.0 without masks). by_label: the
    pairs per label (a label absent: none of it was compared). keypoints: the keypoints of
    pairs compared (those scoring at least `keypoint_score` in either backend: a keypoint on a
    flat heatmap has no stable position, its argmax may move a heatmap cell on float noise);
    max_keypoint_px: their largest coordinate difference.
    """

    compared: int
    unmatched: int
    max_box_px: float
    max_score: float
    min_mask_iou: float
    at_cap: int = 0
    by_label: Mapping[int, int] = field(default_factory=dict)
    keypoints: int = 0
    max_keypoint_px: float = 0.0

    def within(
        self, box_px: float, score: float, mask_iou: float, keypoint_px: float = math.inf
    ) -> bool:
        return (
            self.unmatched == 0
            and self.max_box_px <= box_px
            and self.max_score <= score
            and self.min_mask_iou >= mask_iou
            and self.max_keypoint_px <= keypoint_px
        )

    def describe(self) -> str:
        return (
            f"{self.compared} detections compared: {self.unmatched} without a counterpart, "
            f"boxes differ by up to {self.max_box_px:.3f} px, scores by up to "
            f"{self.max_score:.5f}, lowest mask IoU {self.min_mask_iou:.3f}"
            + (
                f", {self.keypoints} keypoints by up to {self.max_keypoint_px:.3f} px"
                if self.keypoints
                else ""
            )
            + (f"; {self.at_cap} at the detection cap (see Parity)" if self.at_cap else "")
        )


def compare(
    a: Sequence[Detections],
    b: Sequence[Detections],
    *,
    floor: float,
    slack: float = 0.01,
    cap: int | None = None,
    keypoint_score: float = -math.inf,
) -> Parity:
    """`Parity` of two backends' detections of the same tiles (see `Parity`); `cap`: the most
    detections the network keeps per tile (None: no cap); `keypoint_score`: the lowest score
    of a keypoint compared (default: every keypoint)."""
    compared = unmatched = at_cap = keypoints = 0
    max_box = max_score = max_keypoint = 0.0
    min_mask = 1.0
    by_label: dict[int, int] = {}
    for whole_one, whole_other in zip(a, b, strict=True):
        one = whole_one.select(whole_one.scores >= floor - slack)
        other = whole_other.select(whole_other.scores >= floor - slack)
        pairs = _pairs(one, other)
        paired_one = {i for i, _ in pairs}
        paired_other = {j for _, j in pairs}
        counted = [(one, paired_one, whole_other), (other, paired_other, whole_one)]
        compared += max(int((d.scores >= floor).sum()) for d, _, _ in counted)
        for dets, paired, whole in counted:
            full = cap is not None and len(whole) >= cap
            last = float(whole.scores.min()) if len(whole) else 0.0
            for k in np.flatnonzero(dets.scores >= floor):
                if int(k) in paired:
                    continue
                if full and float(dets.scores[k]) <= last + slack:
                    at_cap += 1
                else:
                    unmatched += 1
        for i, j in pairs:
            if max(one.scores[i], other.scores[j]) < floor:
                continue
            max_box = max(max_box, float(np.abs(one.boxes[i] - other.boxes[j]).max()))
            max_score = max(max_score, abs(float(one.scores[i]) - float(other.scores[j])))
            if one.masks is not None and other.masks is not None:
                min_mask = min(min_mask, _mask_iou(one, i, other, j))
            if one.keypoints is not None and other.keypoints is not None:
                ki, kj = one.keypoints[i], other.keypoints[j]
                shown = np.maximum(ki[:, 2], kj[:, 2]) >= keypoint_score
                if shown.any():
                    keypoints += int(shown.sum())
                    gap = float(np.abs(ki[shown, :2] - kj[shown, :2]).max())
                    max_keypoint = max(max_keypoint, gap)
            label = int(one.labels[i])
            by_label[label] = by_label.get(label, 0) + 1
    return Parity(
        compared,
        unmatched,
        max_box,
        max_score,
        min_mask,
        at_cap,
        by_label=by_label,
        keypoints=keypoints,
        max_keypoint_px=max_keypoint,
    )


def _pairs(one: Detections, other: Detections) -> list[tuple[int, int]]:
    if not len(one) or not len(other):
        return []
    a, b = one.boxes[:, None, :], other.boxes[None, :, :]
    iw = (np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0])).clip(0)
    ih = (np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1])).clip(0)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    iou = inter / np.maximum(area_a + area_b - inter, 1e-9)
    iou[one.labels[:, None] != other.labels[None, :]] = 0
    pairs, used_i, used_j = [], set(), set()
    for flat in np.argsort(-iou, axis=None):
        i, j = np.unravel_index(flat, iou.shape)
        if iou[i, j] < 0.5:
            break
        if i in used_i or j in used_j:
            continue
        used_i.add(i)
        used_j.add(j)
        pairs.append((int(i), int(j)))
    return pairs


def _mask_iou(one: Detections, i: int, other: Detections, j: int) -> float:
    x1 = int(np.ceil(max(one.boxes[i, 2], other.boxes[j, 2]))) + 1
    y1 = int(np.ceil(max(one.boxes[i, 3], other.boxes[j, 3]))) + 1
    m1, m2 = one.full_mask(i, x1, y1), other.full_mask(j, x1, y1)
    union = np.logical_or(m1, m2).sum()
    return 1.0 if union == 0 else float(np.logical_and(m1, m2).sum() / union)
