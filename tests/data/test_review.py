"""review: each rule on a crafted image, duplicates and clusters, nothing lost, atomic outputs."""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from data import hamming
from data import review as review_module
from data.atomic import read_jsonl
from data.config import ReviewConfig
from data.errors import AnonlabError
from data.hamming import nearest_other, pairs_within
from data.image_scores import decode_working
from data.manifest import ManifestRecord, read_manifest, write_manifest
from data.near_duplicates import near_duplicate_rejections, union_find
from data.review import REASONS, ReviewReport, run_review
from tests.conftest import REPO
from tests.images import encode, jpeg_bytes, pil_bytes, texture

W, H = 400, 300


def config(**overrides: object) -> ReviewConfig:
    """The repository's default review config (conf/review/default.yaml), with overrides."""
    values = yaml.safe_load((REPO / "conf" / "review" / "default.yaml").read_text())
    return ReviewConfig(**{**values, **overrides})


@dataclass
class Store:
    """A raw store in a temp folder: images under images/, rows for manifest.jsonl."""

    root: Path
    records: list[ManifestRecord] = field(default_factory=list)

    def add(
        self,
        data: bytes,
        name: str,
        *,
        orientation: int | None = None,
        session: str = "drive-01",
    ) -> ManifestRecord:
        sha = hashlib.sha256(data).hexdigest()
        path = f"images/{sha[:2]}/{name}"
        (self.root / path).parent.mkdir(parents=True, exist_ok=True)
        (self.root / path).write_bytes(data)
        try:
            img = Image.open(io.BytesIO(data))
            (width, height), fmt, channels = img.size, img.format or "?", len(img.getbands())
        except Exception:  # an unreadable file still has a manifest row, as collect wrote it
            width, height, fmt, channels = W, H, "JPEG", 3
        rec = ManifestRecord(
            sha256=sha,
            path=path,
            source="test",
            source_path=f"/drive/{name}",
            session=session,
            width=width,
            height=height,
            format=fmt,
            bit_depth=8,
            channels=channels,
            size=len(data),
            source_version=f"{len(data)}-0",
            collected_at="2026-11-22T00:00:00Z",
            delete_after="2027-05-21T00:00:00Z",
            orientation=orientation,
        )
        self.records.append(rec)
        return rec

    def save(self) -> None:
        write_manifest(self.root / "manifest.jsonl", self.records)


@dataclass
class Result:
    report: ReviewReport
    kept: list[ManifestRecord]
    rejected: dict[str, dict]  # by sha256
    metrics: dict

    def reason(self, rec: ManifestRecord) -> str:
        return self.rejected[rec.sha256]["reason"] if rec.sha256 in self.rejected else "kept"


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "raw")


def review(store: Store, cfg: ReviewConfig | None = None) -> Result:
    store.save()
    out = store.root.parent / "reviewed"
    report = run_review(cfg or config(), store.root, out)
    rejected = {row["sha256"]: row for row in read_jsonl(out / "rejected.jsonl")}
    metrics = json.loads((out / "metrics.json").read_text())
    return Result(report, read_manifest(out / "manifest.jsonl"), rejected, metrics)


def png(arr: np.ndarray, **kwargs: object) -> bytes:
    return pil_bytes(arr, "PNG", **kwargs)


def blur(arr: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(arr, (0, 0), sigma)


def brighter(arr: np.ndarray, by: int) -> np.ndarray:
    return np.clip(arr.astype(np.int16) + by, 0, 255).astype(np.uint8)


def with_comment(jpeg: bytes, text: bytes) -> bytes:
    """The same JPEG (same coded pixels) with a COM segment: other bytes, other metadata."""
    segment = b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text
    return jpeg[:2] + segment + jpeg[2:]


# ---------------------------------------------------------------------------------------------
# Each rule fires on its image, and not on a normal one


def test_each_rule_fires_on_its_image_and_not_on_a_normal_one(store: Store) -> None:
    cfg = config()
    normal = store.add(jpeg_bytes(texture(W, H, 1)), "normal.jpg")
    dark = store.add(jpeg_bytes((texture(W, H, 2) * 0.08).astype(np.uint8)), "dark.jpg")
    bright = texture(W, H, 3)
    bright[:, : int(W * 0.6)] = 255
    overexposed = store.add(png(bright), "overexposed.png")
    blurry = store.add(jpeg_bytes(blur(texture(W, H, 5), 6)), "blurry.jpg")
    small = store.add(jpeg_bytes(texture(300, 150, 6)), "small.jpg")
    result = review(store, cfg)

    expected = [
        (normal, "kept"),
        (dark, "too_dark"),
        (overexposed, "overexposed"),
        (blurry, "blurry"),
        (small, "too_small"),
    ]
    assert [(rec.path, result.reason(rec)) for rec, _ in expected] == [
        (rec.path, reason) for rec, reason in expected
    ]
    row = result.rejected
    assert row[dark.sha256]["score"] < cfg.dark_threshold == row[dark.sha256]["threshold"]
    assert row[overexposed.sha256]["score"] > cfg.overexposed_threshold
    assert row[blurry.sha256]["score"] < cfg.blur_threshold
    # The side furthest below its minimum is the score.
    assert (row[small.sha256]["score"], row[small.sha256]["threshold"]) == (150, cfg.min_height)
    assert "300x150" in row[small.sha256]["detail"]
    # The normal image carries its scores, and they are on the right side of every threshold.
    scores = result.kept[0].extra["review"]
    assert scores["mean"] >= cfg.dark_threshold and scores["sharpness"] >= cfg.blur_threshold
    assert scores["overexposed"] <= cfg.overexposed_threshold and len(scores["phash"]) == 16


def test_thresholds_come_from_the_config(store: Store) -> None:
    dim = store.add(jpeg_bytes(brighter(texture(W, H, 2), -60)), "dim.jpg")  # mean ~0.2
    assert review(store, config(dark_threshold=0.1)).reason(dim) == "kept"
    assert review(store, config(dark_threshold=0.3)).reason(dim) == "too_dark"


def test_unreadable_images_are_rejected_not_fatal(store: Store) -> None:
    good = store.add(jpeg_bytes(texture(W, H, 1)), "good.jpg")
    garbage = store.add(b"\xff\xd8\xff\xe0 this is not a JPEG", "garbage.jpg")
    truncated = store.add(jpeg_bytes(texture(W, H, 2))[:3000], "truncated.jpg")
    missing = store.add(jpeg_bytes(texture(W, H, 3)), "missing.jpg")
    (store.root / missing.path).unlink()
    result = review(store)
    assert result.reason(good) == "kept"
    for rec in (garbage, truncated, missing):
        assert result.reason(rec) == "unreadable"
        assert result.rejected[rec.sha256]["detail"]  # the decoder's message, for the user
    assert result.report.by_reason["unreadable"] == 3


# ---------------------------------------------------------------------------------------------
# Exact duplicates


def test_exact_duplicates_with_different_bytes_keep_the_first(store: Store) -> None:
    arr = texture(W, H, 1)
    first_png = store.add(png(arr, compress_level=1), "a.png")
    info = PngInfo()
    info.add_text("Comment", "exported again")
    again_png = store.add(png(arr, compress_level=9, pnginfo=info), "b.png")
    as_tiff = store.add(pil_bytes(arr, "TIFF"), "c.tif")
    jpeg = jpeg_bytes(texture(W, H, 2))
    first_jpeg = store.add(jpeg, "d.jpg")
    commented = store.add(with_comment(jpeg, b"re-tagged by another tool"), "e.jpg")
    assert len({r.sha256 for r in store.records}) == 5  # five different files
    result = review(store)

    assert result.reason(first_png) == result.reason(first_jpeg) == "kept"
    for copy, original in ((again_png, first_png), (as_tiff, first_png), (commented, first_jpeg)):
        row = result.rejected[copy.sha256]
        assert (row["reason"], row["duplicate_of"]) == ("duplicate", original.sha256)


def test_equal_working_images_are_confirmed_by_the_full_pixels(store: Store) -> None:
    # Two images whose reduced decodes are identical but whose full pixels differ: not exact
    # duplicates (the full-decode check says so), but near-duplicates at distance 0.
    arr = np.zeros((384, 512), np.uint8)
    arr[:] = texture(256, 192, 4)[:, :, 0].repeat(2, axis=0).repeat(2, axis=1)
    changed = arr.copy()
    changed[10, 10] = arr[10, 10] + 1 if arr[10, 10] < 255 else 254  # one 2x2 block, +-1/4
    a, b = png(arr), png(changed)
    cfg = config(work_size=256)  # an exact 2x shrink, so the +1 vanishes in the working image
    assert np.array_equal(
        decode_working(a, cfg.work_size).luma, decode_working(b, cfg.work_size).luma
    )
    first = store.add(a, "a.png")
    second = store.add(b, "b.png")
    result = review(store, cfg)
    assert result.reason(first) == "kept"
    row = result.rejected[second.sha256]
    assert (row["reason"], row["score"], row["duplicate_of"]) == ("near_duplicate", 0, first.sha256)


# ---------------------------------------------------------------------------------------------
# Near-duplicates


def test_near_duplicate_cluster_keeps_the_sharpest(store: Store) -> None:
    cfg = config()
    scene = texture(W, H, 1)
    softer = store.add(jpeg_bytes(blur(scene, 0.6)), "frame-1.jpg")
    sharpest = store.add(jpeg_bytes(scene, quality=95), "frame-2.jpg")
    lighter = store.add(jpeg_bytes(blur(brighter(scene, 8), 0.5), quality=80), "frame-3.jpg")
    other = store.add(jpeg_bytes(texture(W, H, 2)), "elsewhere.jpg")
    result = review(store, cfg)

    assert result.reason(sharpest) == result.reason(other) == "kept"
    for rec in (softer, lighter):
        row = result.rejected[rec.sha256]
        assert (row["reason"], row["duplicate_of"]) == ("near_duplicate", sharpest.sha256)
        assert 0 <= row["score"] <= cfg.near_duplicate_hamming == row["threshold"]
    assert [r.path for r in result.kept] == [sharpest.path, other.path]


@pytest.mark.parametrize("scope", ["session", "all"])
def test_near_duplicates_are_looked_for_within_a_session_unless_configured(
    store: Store, scope: str
) -> None:
    scene = texture(W, H, 1)
    monday = store.add(jpeg_bytes(scene, quality=95), "a.jpg", session="monday")
    tuesday = store.add(jpeg_bytes(blur(scene, 0.6)), "b.jpg", session="tuesday")
    result = review(store, config(near_duplicate_scope=scope))
    assert result.reason(monday) == "kept"
    assert result.reason(tuesday) == ("kept" if scope == "session" else "near_duplicate")


def test_quality_rules_run_before_clustering(store: Store) -> None:
    # The sharp frame is kept even though a blurry near-copy comes first.
    scene = texture(W, H, 1)
    blurry = store.add(jpeg_bytes(blur(scene, 6)), "blurry.jpg")
    sharp = store.add(jpeg_bytes(scene), "sharp.jpg")
    result = review(store)
    assert (result.reason(blurry), result.reason(sharp)) == ("blurry", "kept")


def test_distinct_images_are_not_clustered(store: Store) -> None:
    recs = [store.add(jpeg_bytes(texture(W, H, seed)), f"{seed}.jpg") for seed in range(1, 9)]
    result = review(store)
    assert [result.reason(r) for r in recs] == ["kept"] * len(recs)


def test_clustering_is_transitive_and_keeps_the_sharpest() -> None:
    # a-b and b-c are 5 bits apart, a-c 10: one cluster at a threshold of 6.
    a, b, c, far = 0, 0b11111, 0b1111111111, (1 << 64) - 1
    hashes = np.array([a, b, c, far], dtype=np.uint64)
    sharpness = np.array([10.0, 20.0, 30.0, 99.0])
    assert near_duplicate_rejections(hashes, sharpness, 6) == [(0, 2, 10), (1, 2, 5)]
    # Ties keep the earliest.
    assert near_duplicate_rejections(hashes[:2], np.array([5.0, 5.0]), 6) == [(1, 0, 5)]
    assert near_duplicate_rejections(hashes, sharpness, 4) == []


def random_hashes(n: int, seed: int) -> np.ndarray:
    """Random 64-bit hashes with planted near pairs (a few bits flipped)."""
    rng = np.random.default_rng(seed)
    h = rng.integers(0, 2**63, n, dtype=np.uint64) * np.uint64(2) + rng.integers(0, 2, n).astype(
        np.uint64
    )
    for i in range(0, n - 1, 7):
        bits = rng.choice(64, int(rng.integers(0, 9)), replace=False)
        h[i + 1] = h[i] ^ np.uint64(sum(1 << int(b) for b in bits))
    return h


def test_pairwise_comparison_matches_a_plain_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hamming, "BLOCK_PAIRS", 50)  # many small blocks
    h = random_hashes(60, 0)
    ints = [int(x) for x in h]
    rows, cols = pairs_within(h, 6)
    expected = {
        (i, j)
        for i in range(len(ints))
        for j in range(i + 1, len(ints))
        if (ints[i] ^ ints[j]).bit_count() <= 6
    }
    assert set(zip(rows.tolist(), cols.tolist(), strict=True)) == expected and expected
    distance, other = nearest_other(h)
    for i in range(len(ints)):
        others = [(ints[i] ^ ints[j]).bit_count() for j in range(len(ints)) if j != i]
        assert distance[i] == min(others)
        assert (ints[i] ^ ints[int(other[i])]).bit_count() == distance[i] and other[i] != i


def test_union_find_labels_components() -> None:
    labels = union_find(6, [4, 1, 2], [5, 2, 4])
    assert labels.tolist() == [0, 1, 1, 3, 1, 1]
    assert union_find(0, [], []).tolist() == []


# ---------------------------------------------------------------------------------------------
# Formats


def test_sixteen_bit_and_grey_images_are_scored(store: Store) -> None:
    ramp = np.tile(np.linspace(0.2, 0.6, W), (H, 1))
    scene16 = (texture(W, H, 1)[:, :, 0].astype(np.float64) / 255 * 0.5 + ramp * 0.5) * 65535
    png16 = store.add(encode(scene16.astype(np.uint16), ".png"), "deep.png")
    tiff_grey = store.add(pil_bytes(texture(W, H, 2)[:, :, 1], "TIFF"), "grey.tif")
    tiff16 = store.add(encode(texture(W, H, 3).astype(np.uint16) * 257, ".tiff"), "deep.tif")
    webp = store.add(pil_bytes(texture(W, H, 4), "WEBP", quality=90), "photo.webp")
    result = review(store)
    for rec in (png16, tiff_grey, tiff16, webp):
        assert result.reason(rec) == "kept"
    means = {r.path: r.extra["review"]["mean"] for r in result.kept}
    assert 0.3 < means[png16.path] < 0.55  # on the 8-bit scale, not clipped to white
    assert 0.3 < means[tiff16.path] < 0.6


# ---------------------------------------------------------------------------------------------
# Outputs: nothing lost, unchanged rows, metrics, the report


def mixed_store(store: Store) -> Store:
    scene = texture(W, H, 1)
    store.add(jpeg_bytes(scene), "a.jpg")
    store.add(jpeg_bytes(blur(scene, 0.6)), "b.jpg")  # near-duplicate of a
    store.add(with_comment(jpeg_bytes(scene), b"x"), "c.jpg")  # exact duplicate of a
    store.add(jpeg_bytes((texture(W, H, 2) * 0.05).astype(np.uint8)), "d.jpg")
    store.add(jpeg_bytes(blur(texture(W, H, 3), 8)), "e<b>&'x\".jpg")  # blurry: shown
    store.add(jpeg_bytes(np.full((H, W, 3), 255, np.uint8)), "white.jpg")
    store.add(jpeg_bytes(texture(100, 80, 4)), "f.jpg")
    store.add(b"broken", "g.jpg")
    store.add(jpeg_bytes(texture(W, H, 5)), "h.jpg")
    for seed in range(6, 10):
        store.add(jpeg_bytes(texture(W, H, seed)), f"{seed}.jpg")
    return store


def test_every_image_is_kept_or_rejected_once_and_counts_add_up(store: Store) -> None:
    result = review(mixed_store(store))
    report, metrics = result.report, result.metrics
    assert report.input == len(store.records) == report.kept + report.rejected
    assert report.kept == len(result.kept) and report.rejected == len(result.rejected)
    kept = [r.sha256 for r in result.kept]
    assert sorted(kept + list(result.rejected)) == sorted(r.sha256 for r in store.records)
    assert set(report.by_reason) == set(REASONS)
    for reason in REASONS:  # each rule fires at least once in this store
        assert report.by_reason[reason] >= 1, reason
    assert set(metrics) == {"input", "kept", "rejected", "rejected_by_reason", "thresholds"}
    assert (metrics["input"], metrics["kept"], metrics["rejected"]) == (
        report.input,
        report.kept,
        report.rejected,
    )
    assert metrics["rejected_by_reason"] == report.by_reason
    assert sum(metrics["rejected_by_reason"].values()) == metrics["rejected"]
    assert set(metrics["thresholds"]) == {
        "min_width",
        "min_height",
        "dark_threshold",
        "overexposed_threshold",
        "blur_threshold",
        "near_duplicate_hamming",
        "work_size",
    }
    for row in result.rejected.values():
        assert set(row) == {
            "sha256",
            "path",
            "reason",
            "score",
            "threshold",
            "duplicate_of",
            "detail",
        }
        assert (row["duplicate_of"] is not None) == (
            row["reason"] in ("duplicate", "near_duplicate")
        )


def test_kept_rows_are_unchanged_and_in_input_order(store: Store) -> None:
    result = review(mixed_store(store))
    by_sha = {r.sha256: r for r in store.records}
    order = [r.sha256 for r in store.records if r.sha256 in {k.sha256 for k in result.kept}]
    assert [k.sha256 for k in result.kept] == order
    for kept in result.kept:
        row = kept.to_dict()
        assert set(row.pop("extra")) == {"review"}
        original = by_sha[kept.sha256].to_dict()
        original.pop("extra")
        assert row == original


def test_report_shows_every_reason_with_thumbnails_and_escapes_text(store: Store) -> None:
    result = review(mixed_store(store))
    page = (store.root.parent / "reviewed" / "report.html").read_text()
    for reason in REASONS:
        assert f'id="{reason}"' in page and result.report.rules[reason].split()[0] in page
    assert page.count("data:image/jpeg;base64,") >= result.report.rejected - 1  # not `broken`
    assert "<b>&" not in page and "e&lt;b&gt;&amp;&#x27;x&quot;.jpg" in page
    assert "http" not in page  # self-contained: nothing to fetch
    assert "kept, near a threshold" in page


def _kept_section(store: Store) -> str:
    page = (store.root.parent / "reviewed" / "report.html").read_text()
    return page.split('<section id="kept">')[1].split("</section>")[0]


def test_kept_gallery_shows_only_the_images_near_a_threshold(store: Store) -> None:
    store.add(jpeg_bytes(texture(W, H, 1)), "far.jpg")  # far from every threshold
    store.add(jpeg_bytes((texture(W, H, 2) * 0.3).astype(np.uint8)), "dim.jpg")  # mean 0.13
    result = review(store, config(blur_threshold=10.0))
    assert result.report.kept == 2
    kept = _kept_section(store)
    assert "too_dark? mean luminance 0.13" in kept and "dim.jpg" in kept
    assert "far.jpg" not in kept and kept.count("<figure") == 1
    assert "1 of 2 kept images are near a threshold" in kept
    # What "near" is, in each rule's own units: within half the threshold's value.
    assert "mean luminance 0.12 to 0.18" in kept and "7 to 9 pHash bits" in kept


def test_kept_gallery_says_so_when_no_image_is_near_a_threshold(store: Store) -> None:
    for seed in (1, 3):  # 0 % overexposed: far below the 40 % threshold, as every other score
        store.add(jpeg_bytes(texture(W, H, seed)), f"{seed}.jpg")
    assert review(store).report.kept == 2
    kept = _kept_section(store)
    assert "no kept image is near a threshold: none shown" in kept
    assert "<figure" not in kept


def test_summary_is_a_readable_table(store: Store) -> None:
    report = review(mixed_store(store)).report
    text = report.summary()
    assert f"{report.input} images, {report.kept} kept, {report.rejected} rejected" in text
    for reason in REASONS:
        assert any(
            line.split()[:2] == [reason, str(report.by_reason[reason])]
            for line in text.splitlines()
        )


def test_empty_manifest_writes_empty_outputs(store: Store) -> None:
    result = review(store)
    assert (result.report.input, result.report.kept, result.report.rejected) == (0, 0, 0)
    assert result.kept == [] and result.rejected == {}


# ---------------------------------------------------------------------------------------------
# A failed run leaves the previous outputs as they were


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_missing_raw_manifest_says_to_run_collect(tmp_path: Path) -> None:
    with pytest.raises(AnonlabError, match="anonlab collect"):
        run_review(config(), tmp_path / "raw", tmp_path / "reviewed")
    assert not (tmp_path / "reviewed").exists()


def test_a_failed_run_leaves_the_previous_outputs(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.add(jpeg_bytes(texture(W, H, 1)), "a.jpg")
    review(store)
    out = store.root.parent / "reviewed"
    before = snapshot(out)
    written = {"manifest.jsonl", "rejected.jsonl", "report.html", "metrics.json", "headline.json"}
    assert set(before) == written

    manifest = store.root / "manifest.jsonl"
    manifest.write_text(manifest.read_text() + "{not json\n")
    with pytest.raises(AnonlabError, match="not a valid manifest"):
        run_review(config(), store.root, out)
    assert snapshot(out) == before

    manifest.unlink()
    with pytest.raises(AnonlabError, match="anonlab collect"):
        run_review(config(), store.root, out)
    assert snapshot(out) == before

    # A failure while the outputs are written: the staging folder goes, the old outputs stay.
    store.save()

    def broken(*_: object) -> None:
        raise RuntimeError("disk full")

    # metrics.json and headline.json are the last files written into the staging folder.
    monkeypatch.setattr(review_module, "write_json", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        run_review(config(), store.root, out)
    assert snapshot(out) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["raw", "reviewed"]
