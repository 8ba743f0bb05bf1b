"""CocoDetection targets, errors and the grouped batch sampler, on a tiny COCO file in tmp_path."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torch.utils.data import DataLoader

from data.errors import AnonlabError
from training.augment import build_augmenter
from training.dataset import (
    CocoDetection,
    GroupedBatchSampler,
    aspect_ratio_groups,
    collate,
    images_to_float,
    worker_init_fn,
)

CLASSES = ["face", "person", "license_plate", "vehicle"]
KEYPOINTS = ["nose", "left_eye", "right_eye", "left_ear", "right_ear"]


def _ann(mask: np.ndarray, category: int, **extra: object) -> dict[str, object]:
    rle = mask_utils.encode(np.asfortranarray(mask))
    rle["counts"] = rle["counts"].decode("ascii")
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    bbox = [x0, y0, int(xs.max()) + 1 - x0, int(ys.max()) + 1 - y0]
    return {
        "category_id": category,
        "bbox": bbox,
        "area": int(mask.sum()),
        "segmentation": rle,
        "iscrowd": 0,
        **extra,
    }


@pytest.fixture
def coco_file(tmp_path: Path) -> Path:
    """Three images: a person (keypoints) and a plate, a portrait with a face, an empty tile."""
    root = tmp_path / "prepared"
    (root / "tiles").mkdir(parents=True)
    rng = np.random.default_rng(0)
    images, anns = [], []
    sizes = [(64, 48), (40, 72), (64, 48)]  # (width, height)
    for i, (w, h) in enumerate(sizes, start=1):
        pixels = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "tiles" / f"{i}.png")
        images.append({"id": i, "file_name": f"tiles/{i}.png", "width": w, "height": h})
    person = np.zeros((48, 64), np.uint8)
    person[5:40, 10:22] = 1
    person[40:45, 12:18] = 1
    kp = [16, 8, 2, 18, 6, 2, 14, 6, 2, 0, 0, 0, 12, 7, 1]
    anns.append({**_ann(person, 2, keypoints=kp, num_keypoints=4), "image_id": 1})
    plate = np.zeros((48, 64), np.uint8)
    plate[30:34, 40:55] = 1
    anns.append({**_ann(plate, 3), "image_id": 1})
    face = np.zeros((72, 40), np.uint8)
    face[10:20, 5:13] = 1
    anns.append({**_ann(face, 1), "image_id": 2})
    for n, a in enumerate(anns, start=1):
        a["id"] = n
    categories: list[dict[str, object]] = [
        {"id": i + 1, "name": name} for i, name in enumerate(CLASSES)
    ]
    categories[1].update(keypoints=KEYPOINTS, skeleton=[])
    path = root / "train.json"
    path.write_text(
        json.dumps({"images": images, "annotations": anns, "categories": categories}),
        encoding="utf-8",
    )
    return path


def _dataset(coco_file: Path, **kwargs: object) -> CocoDetection:
    return CocoDetection(coco_file, classes=CLASSES, keypoint_names=KEYPOINTS, **kwargs)


def _extent(mask: torch.Tensor) -> list[float]:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]


def test_targets_have_torchvision_shapes_and_dtypes(coco_file: Path) -> None:
    image, target = _dataset(coco_file)[0]
    assert image.shape == (3, 48, 64) and image.dtype == torch.uint8
    expected = np.array(Image.open(coco_file.parent / "tiles/1.png"))
    assert torch.equal(image, torch.from_numpy(expected).permute(2, 0, 1))
    # What the model is fed: float in [0, 1], the same pixels.
    (as_float,) = images_to_float([image], "cpu")
    assert as_float.dtype == torch.float32
    assert torch.allclose(as_float * 255, image.float(), atol=1e-4)
    assert target["boxes"].shape == (2, 4) and target["boxes"].dtype == torch.float32
    assert target["labels"].tolist() == [2, 3] and target["labels"].dtype == torch.int64
    assert target["masks"].shape == (2, 48, 64) and target["masks"].dtype == torch.uint8
    assert target["keypoints"].shape == (2, 5, 3) and target["keypoints"].dtype == torch.float32
    assert target["keypoints"][0, 0].tolist() == [16, 8, 2]
    assert not target["keypoints"][1].any()  # the plate has no keypoints
    assert target["image_id"].item() == 1
    assert target["area"].dtype == torch.float32 and target["iscrowd"].tolist() == [0, 0]
    for box, mask in zip(target["boxes"], target["masks"], strict=True):
        assert box.tolist() == _extent(mask)
    assert target["area"].tolist() == [float(m.sum()) for m in target["masks"]]


def test_keypoints_can_be_left_out(coco_file: Path) -> None:
    _, target = _dataset(coco_file, keypoints=False)[0]
    assert "keypoints" not in target


def test_empty_image_gives_empty_targets(coco_file: Path) -> None:
    image, target = _dataset(coco_file)[2]
    assert image.shape == (3, 48, 64)
    assert target["boxes"].shape == (0, 4) and target["boxes"].dtype == torch.float32
    assert target["labels"].shape == (0,) and target["labels"].dtype == torch.int64
    assert target["masks"].shape == (0, 48, 64)
    assert target["keypoints"].shape == (0, 5, 3)
    assert target["area"].shape == (0,) and target["iscrowd"].shape == (0,)


def test_horizontal_flip_mirrors_image_boxes_and_masks(coco_file: Path) -> None:
    flip = build_augmenter([{"name": "HorizontalFlip", "p": 1.0}], keypoint_names=KEYPOINTS)
    plain_image, plain = _dataset(coco_file)[0]
    image, target = _dataset(coco_file, augmenter=flip)[0]
    assert torch.equal(image, plain_image.flip(-1))
    assert torch.equal(target["masks"], plain["masks"].flip(-1))
    x0, y0, x1, y1 = plain["boxes"].unbind(1)
    assert torch.equal(target["boxes"], torch.stack([64 - x1, y0, 64 - x0, y1], 1))
    assert target["labels"].tolist() == [2, 3]
    assert target["area"].tolist() == plain["area"].tolist()
    # The nose moves to the mirrored pixel column; left and right eyes swap.
    assert target["keypoints"][0, 0].tolist() == [63 - 16, 8, 2]
    assert target["keypoints"][0, 1].tolist() == [63 - 14, 6, 2]


def test_category_mismatch_names_both(coco_file: Path) -> None:
    with pytest.raises(AnonlabError, match=r"(?s)face.*vehicle.*plate.*face"):
        CocoDetection(coco_file, classes=["plate", "face"], keypoint_names=KEYPOINTS)


def test_missing_image_is_named(coco_file: Path) -> None:
    (coco_file.parent / "tiles" / "2.png").unlink()
    dataset = _dataset(coco_file)
    with pytest.raises(AnonlabError, match=r"tiles/2\.png"):
        dataset[1]


def test_images_are_read_upright_and_must_have_the_coco_files_size(coco_file: Path) -> None:
    tile = coco_file.parent / "tiles" / "1.png"
    pixels = np.array(Image.open(tile))
    # Stored turned a quarter, with the EXIF orientation (6) that turns it back: as a viewer
    # shows it, the picture the annotations were drawn on.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).transpose(Image.Transpose.ROTATE_90).save(tile, exif=exif.tobytes())
    image, _ = _dataset(coco_file)[0]
    assert torch.equal(image, torch.from_numpy(pixels).permute(2, 0, 1))
    # Turned without the tag, it is upright at another size: its annotations would miss.
    Image.fromarray(pixels).transpose(Image.Transpose.ROTATE_90).save(tile)
    with pytest.raises(
        AnonlabError, match=r"tiles/1\.png: 48x64 upright, the COCO file says 64x48"
    ):
        _dataset(coco_file)[0]


def test_aspect_ratio_groups(coco_file: Path) -> None:
    assert aspect_ratio_groups(_dataset(coco_file)) == [1, 0, 1]


def test_grouped_batch_sampler_covers_each_index_once_in_single_group_batches() -> None:
    groups = [0, 1, 1, 0, 0, 1, 0, 0, 1, 0, 2]
    sampler = GroupedBatchSampler(groups, 3, generator=torch.Generator().manual_seed(1))
    for _ in range(3):  # epochs
        batches = list(sampler)
        assert len(batches) == len(sampler) == 2 + 2 + 1
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(len(groups)))
        assert all(len({groups[i] for i in b}) == 1 for b in batches)
        assert all(1 <= len(b) <= 3 for b in batches)


def test_grouped_batch_sampler_is_deterministic_with_a_seed() -> None:
    groups = [i % 3 for i in range(50)]

    def epochs(seed: int) -> list[list[list[int]]]:
        sampler = GroupedBatchSampler(groups, 4, generator=torch.Generator().manual_seed(seed))
        return [list(sampler), list(sampler)]

    first = epochs(7)
    assert first == epochs(7)
    assert first[0] != first[1]  # a new order each epoch
    assert first != epochs(8)


def test_works_in_a_dataloader(coco_file: Path) -> None:
    dataset = _dataset(coco_file)
    sampler = GroupedBatchSampler(
        aspect_ratio_groups(dataset), 2, generator=torch.Generator().manual_seed(0)
    )
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=0, collate_fn=collate)
    seen = []
    for images, targets in loader:
        assert len(images) == len(targets)
        assert len({tuple(im.shape[1:]) for im in images}) == 1  # one aspect group
        seen += [t["image_id"].item() for t in targets]
    assert sorted(seen) == [1, 2, 3]


def test_worker_init_fn_seeds_the_augmenter(
    coco_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    augmenter = build_augmenter([{"name": "HorizontalFlip", "p": 0.5}], keypoint_names=KEYPOINTS)
    dataset = _dataset(coco_file, augmenter=augmenter)
    seeds: list[int | None] = []
    monkeypatch.setattr(augmenter, "set_seed", seeds.append)

    class Info:
        seed = 12345
        id = 2

    Info.dataset = dataset  # type: ignore[attr-defined]
    monkeypatch.setattr("training.dataset.get_worker_info", lambda: Info)
    partial(worker_init_fn, base_seed=100)(2)
    worker_init_fn(2)
    assert seeds == [102, 12345]


def test_instances_with_degenerate_boxes_are_dropped(coco_file: Path) -> None:
    data = json.loads(coco_file.read_text())
    flat = {**_ann(np.pad(np.ones((1, 1), np.uint8), ((0, 47), (0, 63))), 4), "image_id": 1}
    flat["bbox"] = [5, 5, 0, 3]  # no width: torchvision's models refuse such a box
    data["annotations"].append({**flat, "id": 99})
    coco_file.write_text(json.dumps(data))
    _, target = _dataset(coco_file)[0]
    # The zero-width vehicle is gone from every field; the person and the plate stay.
    assert target["labels"].tolist() == [2, 3]
    assert len(target["boxes"]) == len(target["masks"]) == len(target["keypoints"]) == 2
    assert len(target["area"]) == len(target["iscrowd"]) == 2


def test_a_mask_of_the_wrong_size_names_the_annotation(coco_file: Path) -> None:
    coco = json.loads(coco_file.read_text(encoding="utf-8"))
    wrong = mask_utils.encode(np.asfortranarray(np.ones((10, 10), np.uint8)))
    coco["annotations"][1]["segmentation"] = {"size": [10, 10], "counts": wrong["counts"].decode()}
    coco_file.write_text(json.dumps(coco), encoding="utf-8")
    with pytest.raises(AnonlabError, match=r"annotation 2: bad segmentation: RLE size \[10, 10\]"):
        _dataset(coco_file)[0]


def test_a_model_of_some_classes_sees_only_those_relabelled(coco_file: Path) -> None:
    persons = _dataset(coco_file, model_classes=["person"])
    _, target = persons[0]
    assert target["labels"].tolist() == [1]  # the person; the plate is left out
    assert target["keypoints"][0, 0].tolist() == [16, 8, 2]
    _, target = persons[1]
    assert target["labels"].shape == (0,)  # only a face there
    plates = _dataset(coco_file, model_classes=["license_plate"])
    assert plates[0][1]["labels"].tolist() == [1]
    with pytest.raises(AnonlabError, match=r"model classes \['bicycle'\] are not in"):
        _dataset(coco_file, model_classes=["bicycle"])
