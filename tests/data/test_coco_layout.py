"""The COCO layout anonlab writes (one entry per line), and erasing an image from a file in it by
editing lines, which must give what parsing the whole file gives."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from data.coco import layout
from data.erasure import files, redact
from data.erasure.subjects import Subject

SHAS = [f"{c}" * 64 for c in "abcdef"]


def _dataset(rng: random.Random) -> dict:
    """Images of SHAS (whole images and tiles named by their sha256), their annotations (some
    with a nested `image_id` that is not theirs), a near-duplicate naming another image."""
    images, anns = [], []
    for n in range(rng.randint(1, 12)):
        sha = rng.choice(SHAS)
        name = rng.choice([f"../raw/images/{sha[:2]}/{sha}.jpg", f"tiles/{sha}-{n}-0.jpg"])
        image = {"id": n + 1, "sha256": sha, "file_name": name, "width": 64, "height": 48}
        if rng.random() < 0.2:
            image["duplicate_of"] = rng.choice(SHAS)
        if rng.random() < 0.2:
            image["note"] = "Grüße, ünïcode"  # written escaped, as ASCII
        images.append(image)
        for _ in range(rng.randint(0, 3)):
            ann = {"id": len(anns) + 1, "image_id": n + 1, "bbox": [1.0, 2.0, 3.0, 4.0]}
            if rng.random() < 0.2:
                ann["attributes"] = {"image_id": rng.randint(1, 12)}
            anns.append(ann)
    return {
        "annotations": anns,
        "categories": [{"id": 1, "name": "face"}],
        "images": images,
        "info": {"description": "test"},
        "licenses": [],
    }


def test_the_layout_is_json_with_one_entry_per_line() -> None:
    dataset = _dataset(random.Random(0))
    data = layout.dumps(dataset)
    assert json.loads(data) == dataset
    where = layout.sections(data)
    assert where is not None and set(where) == {"annotations", "categories", "images"}
    for key, (start, close) in where.items():
        lines = data[start:close].split(b"\n")[:-1]
        assert [json.loads(line.rstrip(b",")) for line in lines] == dataset[key]
    assert b'"licenses": []' in data and data.isascii()


def test_other_layouts_are_not_taken_for_it() -> None:
    dataset = _dataset(random.Random(1))
    assert layout.sections(json.dumps(dataset, indent=2).encode()) is None
    assert layout.sections(json.dumps(dataset).encode()) is None
    # one key per line: its list looks like one of this layout, its lines are not entries
    sha = SHAS[0]
    spread = json.dumps({"images": [{"id": 1, "sha256": sha}]}, indent=0) + "\n"
    assert layout.sections(spread.encode()) is not None
    assert redact.coco_lines(spread.encode(), {sha}, [sha]) is None


@pytest.mark.parametrize("seed", range(40))
def test_editing_lines_gives_what_parsing_the_whole_file_gives(seed: int) -> None:
    rng = random.Random(seed)
    dataset = _dataset(rng)
    erased = set(rng.sample(SHAS, rng.randint(1, 2)))
    needles = [n.decode() for s in sorted(erased) for n in Subject(s).needles()]
    edited = redact.coco_lines(layout.dumps(dataset), erased, needles)
    assert edited is not None
    out, changed = edited

    expected, _, removed = redact.coco(dataset, erased)
    expected, scrubbed = redact.scrub(expected, needles)
    assert json.loads(out) == expected
    naming = [i for i in dataset["images"] if i["sha256"] not in erased]
    assert changed == removed + sum(i.get("duplicate_of") in erased for i in naming)
    assert scrubbed <= changed
    assert not redact.holds(out, [n.encode() for n in needles])
    assert layout.sections(out) is not None  # the next erasure edits lines too


def test_a_file_naming_an_image_outside_its_lists_is_parsed_whole(tmp_path: Path) -> None:
    """An indented file (written before the layout) or one that names the image outside an
    entry: parsed, rewritten without it, in the layout, its mode kept."""
    sha = SHAS[0]
    dataset = {
        "images": [{"id": 1, "sha256": sha, "file_name": f"tiles/{sha}-0-0.jpg"}],
        "annotations": [{"id": 1, "image_id": 1}],
        "info": {"source": f"/mnt/{sha}.jpg"},
    }
    subject = Subject(sha)
    needles = [n.decode() for n in subject.needles()]
    assert redact.coco_lines(layout.dumps(dataset), {sha}, needles) is None

    path = tmp_path / "prepared" / "train.json"
    path.parent.mkdir()
    path.write_text(json.dumps(dataset, indent=2))
    path.chmod(0o444)
    held = files.coco_file(path, tmp_path, [subject], write=True)
    assert held and held[0].where == "prepared/train.json" and held[0].count == 3
    assert json.loads(path.read_text()) == {
        "images": [], "annotations": [], "info": {"source": redact.ERASED}
    }  # fmt: skip
    assert layout.sections(path.read_bytes()) is not None
    assert path.stat().st_mode & 0o777 == 0o444
    assert files.coco_file(path, tmp_path, [subject], write=True) == []
