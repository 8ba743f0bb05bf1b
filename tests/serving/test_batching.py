"""Batched inference: windows through the network several at a time (an ONNX graph exported at
a fixed batch, the torch backend at any), tile preparation and mask pasting on background
threads; what is found must not change."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from serving.runtime.architecture import DetectorCore
from serving.runtime.artifact import load_artifact
from serving.runtime.backends import (
    PRECISIONS,
    InputSize,
    OnnxDetector,
    TorchDetector,
    compare,
)
from serving.runtime.commands.options import PRECISIONS as CLI_PRECISIONS
from serving.runtime.errors import ArtifactError
from serving.runtime.pipeline import Runtime
from serving.runtime.tiles import TilingSpec, cut, detect_tiled, merge, plan_windows
from tests.images import texture
from tests.serving.artifacts import THRESHOLDS, TILE, tiny_artifact, tiny_model_dir
from training.models import load_model_files

FLOOR = min(THRESHOLDS.values())


@pytest.fixture(scope="module")
def batched_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model (the same weights as `shared_artifact`) exported at a batch of 3."""
    return tiny_artifact(tmp_path_factory.mktemp("batched"), overrides=["export.batch=3"])


@pytest.fixture(scope="module")
def core(tmp_path_factory: pytest.TempPathFactory) -> DetectorCore:
    folder = tiny_model_dir(tmp_path_factory.mktemp("core"))
    model, _ = load_model_files(folder / "config.yaml", folder / "weights.safetensors")
    return DetectorCore(model, score_threshold=0.05)


def _tiles(count: int) -> list[np.ndarray]:
    # Windows of different sizes: a short one is padded on its canvas, like a panorama's edge.
    return [texture(TILE - 20 * (i % 3), TILE, seed=i) for i in range(count)]


def _same(a: list, b: list) -> None:
    parity = compare(a, b, floor=FLOOR)
    assert parity.compared > 0
    assert parity.within(box_px=0.01, score=1e-4, mask_iou=0.99), parity.describe()


def test_a_graph_exported_at_a_batch_finds_what_one_window_at_a_time_finds(
    shared_artifact: Path, batched_artifact: Path
) -> None:
    manifest = load_artifact(batched_artifact).manifest
    assert manifest.batch == 3
    session = ort.InferenceSession(str(batched_artifact / "model.onnx"))
    assert session.get_inputs()[0].shape[0] == 3
    assert [o.name for o in session.get_outputs()][-1] == "image"
    # A 2:1 panorama of 8 windows: two full batches of 3 and a last one padded with 1 blank.
    image = texture(400, 200, seed=11)
    assert len(plan_windows(400, 200, manifest.tiling_spec)) == 8
    one = Runtime.load([shared_artifact]).detect(image)
    three = Runtime.load([batched_artifact]).detect(image)
    _same([one], [three])


def test_onnx_refuses_a_batch_other_than_its_graphs_saying_how_to_get_one(
    batched_artifact: Path,
) -> None:
    with pytest.raises(ArtifactError, match=r"takes batches of 3 windows .*export.batch=4"):
        Runtime.load([batched_artifact], batch=4)
    with pytest.raises(ArtifactError, match="use --backend torch for bf16"):
        Runtime.load([batched_artifact], precision="bf16")
    assert len(Runtime.load([batched_artifact], backend="torch", batch=4).detectors) == 1


def test_torch_in_batches_and_streamed_finds_what_one_window_at_a_time_finds(
    core: DetectorCore,
) -> None:
    tiles = _tiles(7)
    size = InputSize.of(96, 96, TILE)
    one = TorchDetector(core, size=size, mask_threshold=0.5)(tiles)
    for batch, concurrent in ((2, 1), (4, 1), (7, 1), (9, 1), (1, 3), (2, 2)):
        detector = TorchDetector(
            core, size=size, mask_threshold=0.5, batch=batch, concurrent=concurrent
        )
        _same(one, detector(tiles))
        _same(one, list(detector.stream(iter(tiles))))


def test_bf16_runs_and_fp32_stays_the_default(core: DetectorCore) -> None:
    assert PRECISIONS == CLI_PRECISIONS
    size = InputSize.of(96, 96, TILE)
    tiles = _tiles(3)
    found = TorchDetector(core, size=size, mask_threshold=0.5, precision="bf16")(tiles)
    assert len(found) == 3 and sum(len(d) for d in found) > 0
    with pytest.raises(ValueError, match="precision 'fp16': use one of fp32, bf16"):
        TorchDetector(core, size=size, mask_threshold=0.5, precision="fp16")


def test_a_graph_of_one_window_exported_before_batching_still_runs(
    tmp_path: Path, core: DetectorCore, batched_artifact: Path
) -> None:
    """Artifacts of schemas 1 and 2 hold a graph of one (3, S, S) window and four outputs."""

    class OneWindow(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.core = core

        def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return self.core(image[None])[:4]

    size = InputSize.of(96, 96, TILE)
    path = tmp_path / "old.onnx"
    names = ["boxes", "scores", "labels", "masks"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            OneWindow().eval(),
            (torch.zeros(3, size.canvas, size.canvas),),
            str(path),
            opset_version=17,
            dynamo=False,
            input_names=["image"],
            output_names=names,
            dynamic_axes={n: {0: "detections"} for n in names},
        )
    tiles = _tiles(5)
    options = {"kind": "maskrcnn", "size": size, "mask_threshold": 0.5}
    old = OnnxDetector(path, **options)
    new = OnnxDetector(batched_artifact / "model.onnx", batch=3, **options)
    _same(old(tiles), new(tiles))
    _same(old(tiles), list(old.stream(iter(tiles))))
    side_by_side = OnnxDetector(path, concurrent=2, **options)
    _same(old(tiles), list(side_by_side.stream(iter(tiles))))
    with pytest.raises(ArtifactError, match=r"takes batches of 1 windows .* the manifest says 2"):
        OnnxDetector(path, batch=2, **options)


def _threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith("anonlab-")}


def test_the_stream_raises_what_went_wrong_and_stops_its_threads(core: DetectorCore) -> None:
    size = InputSize.of(96, 96, TILE)
    detector = TorchDetector(core, size=size, mask_threshold=0.5, batch=2, concurrent=2)
    before = _threads()

    def failing_cut() -> Iterator[np.ndarray]:
        yield from _tiles(3)
        raise OSError("the image file went away")

    with pytest.raises(OSError, match="the image file went away"):
        list(detector.stream(failing_cut()))
    bad = [*_tiles(2), np.zeros((TILE, TILE), np.uint8)]  # a grey tile: not RGB
    with pytest.raises(ValueError, match=r"a tile is \(H, W, 3\) uint8 RGB"):
        list(detector.stream(iter(bad)))
    # A consumer that stops early: both threads end, the rest of the tiles is never cut.
    taken = []

    def counted() -> Iterator[np.ndarray]:
        for tile in _tiles(40):
            taken.append(1)
            yield tile

    stream = detector.stream(counted())
    next(stream)
    stream.close()
    assert _threads() == before
    assert len(taken) < 40


def test_tiled_detection_streams_the_windows_and_finds_the_same(core: DetectorCore) -> None:
    spec = TilingSpec(tile=TILE, overlap=16)
    image = texture(500, 300, seed=3)
    size = InputSize.of(96, 96, TILE)
    windows = plan_windows(500, 300, spec)
    detector = TorchDetector(core, size=size, mask_threshold=0.5, batch=4)
    streamed = detect_tiled(image, detector, spec)
    one_by_one = merge(
        [
            (w, TorchDetector(core, size=size, mask_threshold=0.5)([cut(image, w)])[0])
            for w in windows
        ],
        500,
        300,
        spec,
    )
    _same([one_by_one], [streamed])
