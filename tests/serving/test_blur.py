"""`anonlab blur` on a real (tiny, random-weight) exported artifact: anonymized copies that keep
their files' metadata, and failing closed: a failure at any step (a full disk included) leaves no
output for that image, gets its row in the ledger, and makes the command exit non-zero after the
others are done; every file found has a row, `--resume` does only what is not ok, and outputs
that would collide are refused."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from serving.cli import main as cli_main
from serving.runtime import pipeline
from serving.runtime.artifact import load_artifact
from serving.runtime.artifact_set import artifact_folders
from serving.runtime.batch import DEFAULT_LEDGER, blur_batch
from serving.runtime.detections import Detections
from serving.runtime.errors import ServingError
from serving.runtime.inputs import find_inputs
from serving.runtime.ledger import OK, Ledger, Row
from serving.runtime.pipeline import Runtime
from tests.images import jpeg_bytes, texture, write


@pytest.fixture(scope="module")
def artifact(shared_artifact: Path) -> Path:
    return shared_artifact  # read only: tests that change an artifact change a copy


@pytest.fixture(scope="module")
def runtime(artifact: Path) -> Runtime:
    return Runtime.load([artifact])


def _inputs(root: Path) -> dict[str, Path]:
    """A folder of inputs: a JPEG with GPS turned by EXIF orientation 6, a PNG, a panorama."""
    return {
        "phone": write(
            root / "in" / "day1" / "phone.jpg",
            jpeg_bytes(texture(160, 120, seed=1), quality=87, gps=True, orientation=6),
        ),
        "png": write(root / "in" / "day1" / "still.png", _png(texture(150, 110, seed=2))),
        "pano": write(root / "in" / "pano.jpg", jpeg_bytes(texture(320, 160, seed=3), gps=True)),
    }


def _png(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


def _leftovers(folder: Path) -> list[Path]:
    """Hidden files in an output folder, but for the ledger: temporaries left behind."""
    return [
        p
        for p in folder.rglob("*")
        if p.name.startswith(".") and DEFAULT_LEDGER not in p.relative_to(folder).parts
    ]


def _ledger(out: Path) -> dict[str, Row]:
    """The last row of each input (by file name) in --out's ledger."""
    return {Path(k).name: row for k, row in Ledger(out / DEFAULT_LEDGER).read().items()}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_blur_writes_anonymized_copies_that_keep_their_metadata(
    artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs = _inputs(tmp_path)
    out = tmp_path / "out"
    argv = ["blur", str(tmp_path / "in"), "--model", str(artifact), "--out", str(out)]
    assert cli_main([*argv, "--sidecar", "--masks"]) == 0
    assert "anonymized 3 images" in capsys.readouterr().out
    assert not _leftovers(out)
    rows = _ledger(out)
    assert {name: row.status for name, row in rows.items()} == dict.fromkeys(
        ["phone.jpg", "still.png", "pano.jpg"], OK
    )
    for name, path in inputs.items():
        row = rows[path.name]
        assert row.input == str(path) and row.input_sha256 == _sha256(path)
        assert row.output == str(out / path.relative_to(tmp_path / "in"))
        assert isinstance(row.regions, int) and row.step is None and row.error is None, name

    # Same relative paths, names and formats; EXIF (GPS, orientation) and quality kept.
    phone_in, phone_out = Image.open(inputs["phone"]), Image.open(out / "day1" / "phone.jpg")
    assert phone_out.format == "JPEG" and phone_out.size == phone_in.size
    assert phone_out.getexif()[0x0112] == 6
    assert dict(phone_out.getexif().get_ifd(0x8825)) == dict(phone_in.getexif().get_ifd(0x8825))
    assert phone_out.quantization == phone_in.quantization

    # The sidecar lists what was hidden, in upright coordinates (orientation 6: 120 x 160).
    sidecar = json.loads((out / "day1" / "phone.jpg.json").read_text())
    assert (sidecar["width"], sidecar["height"]) == (120, 160)
    assert sidecar["detections"], "the tiny model hides something at its 0.1 thresholds"
    assert {d["class"] for d in sidecar["detections"]} <= set(sidecar["classes"])
    assert sidecar["metadata_dropped"] == []  # a plain camera JPEG loses nothing
    # What did it: the model (name, version, the manifest pins name), thresholds and styles.
    manifest = json.loads((artifact / "manifest.json").read_text())
    [model] = sidecar["models"]
    assert (model["name"], model["version"]) == (manifest["name"], manifest["version"])
    assert model["manifest_sha256"] == load_artifact(artifact).manifest_sha256
    assert sidecar["thresholds"] == {manifest["name"]: manifest["thresholds"]}
    assert sidecar["styles"] == {c: manifest["styles"][c] for c in manifest["classes"]}

    # PNG: lossless, so every pixel outside the hidden mask is the input's, bit for bit, and
    # pixels inside it changed.
    before = cv2.imread(str(inputs["png"]), cv2.IMREAD_UNCHANGED)
    after = cv2.imread(str(out / "day1" / "still.png"), cv2.IMREAD_UNCHANGED)
    hidden = cv2.imread(str(out / "day1" / "still.png.mask.png"), cv2.IMREAD_GRAYSCALE) > 0
    assert hidden.any() and not hidden.all()
    share = json.loads((out / "day1" / "still.png.json").read_text())["hidden_share"]
    assert share == round(hidden.mean(), 4)  # the share of the image the mask shows hidden
    np.testing.assert_array_equal(after[~hidden], before[~hidden])
    assert (after[hidden] != before[hidden]).any()


def test_blur_takes_globs_and_refuses_to_overwrite_its_inputs(
    artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs = _inputs(tmp_path)
    jobs = find_inputs([str(tmp_path / "in" / "**" / "*.jpg")]).jobs
    assert sorted(str(j.relative) for j in jobs) == ["day1/phone.jpg", "pano.jpg"]
    original = inputs["pano"].read_bytes()
    code = cli_main(
        ["blur", str(inputs["pano"]), "--model", str(artifact), "--out", str(tmp_path / "in")]
    )
    assert code == 2
    assert "would overwrite the input" in capsys.readouterr().err
    assert inputs["pano"].read_bytes() == original


def test_a_folder_of_artifacts_loads_every_model_in_it(artifact: Path, tmp_path: Path) -> None:
    assert artifact_folders([artifact.parent]) == [artifact]
    assert artifact_folders([artifact]) == [artifact]
    with pytest.raises(ServingError, match=r"no manifest\.json; this is not an exported artifact"):
        Runtime.load([tmp_path])


class _Failing(Runtime):
    """The real runtime, failing at one step for the image whose width is `width`."""

    def __init__(self, real: Runtime, step: str, width: int) -> None:
        super().__init__(real.artifacts, real.detectors)
        self.step, self.width = step, width

    def detect(self, rgb: np.ndarray) -> Detections:
        if self.step == "detect" and rgb.shape[1] == self.width:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return super().detect(rgb)


@pytest.mark.parametrize("step", ["decode", "detect", "anonymize", "write"])
def test_a_failure_at_any_step_leaves_no_output_for_that_image_only(
    runtime: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    inputs = _inputs(tmp_path)
    out = tmp_path / "out"
    jobs = find_inputs([str(tmp_path / "in")])
    # An earlier run left an output for the image that will fail: it must not survive.
    assert not blur_batch(runtime, jobs, out, sidecar=True).failures
    victim = out / "pano.jpg"
    assert victim.exists()

    failing = _Failing(runtime, step, width=320)
    if step == "decode":
        inputs["pano"].write_bytes(inputs["pano"].read_bytes()[:2000])  # truncated upload
    elif step == "anonymize":
        real = pipeline.write_image

        def broken(file, pixels):  # type: ignore[no-untyped-def]
            if file.width == 320:
                raise OSError("No space left on device")
            return real(file, pixels)

        monkeypatch.setattr(pipeline, "write_image", broken)
    elif step == "write":
        victim.unlink()
        (out / "pano.jpg.json").unlink()
        victim.mkdir()  # the output's name is taken by a folder: it cannot be written
    report = blur_batch(failing, jobs, out, sidecar=True)

    assert [(f.input, f.step) for f in report.failures] == [(str(inputs["pano"]), step)]
    assert report.written == 2 and report.failed == 1
    assert not victim.is_file() and not (out / "pano.jpg.json").exists()
    assert (out / "day1" / "phone.jpg").is_file() and (out / "day1" / "still.png").is_file()
    row = _ledger(out)["pano.jpg"]
    assert (row.status, row.step, row.output) == ("failed", step, None) and row.error
    assert row.input_sha256 == _sha256(inputs["pano"])  # the bytes this run read
    assert not _leftovers(out)


def test_blur_exits_non_zero_after_finishing_the_others_and_resume_does_only_those(
    artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs = _inputs(tmp_path)
    inputs["png"].write_bytes(b"this is not an image")
    out = tmp_path / "out"
    argv = ["blur", str(tmp_path / "in"), "--model", str(artifact), "--out", str(out)]
    assert cli_main(argv) == 1
    captured = capsys.readouterr()
    assert "1 FAILED" in captured.out and f"ledger: {out / DEFAULT_LEDGER} (3 rows" in captured.out
    assert f"failed: {inputs['png']}: decode: " in captured.err
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jpg")) == [
        "day1/phone.jpg",
        "pano.jpg",
    ]
    assert not (out / "day1" / "still.png").exists()
    first = _ledger(out)
    assert first["still.png"].status == "failed" and first["still.png"].step == "decode"

    # Once the file is fixed, --resume does it alone: the others keep their first run's rows.
    inputs["png"].write_bytes(_png(texture(150, 110, seed=2)))
    done_before = {p: p.stat().st_mtime_ns for p in out.rglob("*.jpg")}
    assert cli_main([*argv, "--resume"]) == 0
    captured = capsys.readouterr()
    assert "anonymized 1 images" in captured.out and "2 already anonymized" in captured.out
    assert "(1 rows" in captured.out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.jpg")} == done_before
    assert Image.open(io.BytesIO((out / "day1" / "still.png").read_bytes())).format == "PNG"
    rows = _ledger(out)
    assert all(row.status == OK for row in rows.values())
    assert rows["still.png"].input_sha256 == _sha256(inputs["png"])
    files = sorted((out / DEFAULT_LEDGER).glob("*.jsonl"))  # one file per run
    assert len(files) == 2 and sum(len(f.read_text().splitlines()) for f in files) == 4

    # Nothing left to do: a third --resume anonymizes nothing and succeeds.
    assert cli_main([*argv, "--resume"]) == 0
    assert "anonymized 0 images" in capsys.readouterr().out


def test_inputs_that_would_share_an_output_are_refused_before_anything_is_written(
    artifact: Path, runtime: Runtime, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "in"
    a = write(folder / "a" / "x.jpg", jpeg_bytes(texture(64, 48, seed=1)))
    b = write(folder / "b" / "x.jpg", jpeg_bytes(texture(64, 48, seed=2)))
    upper = write(folder / "c" / "Y.jpg", jpeg_bytes(texture(64, 48, seed=3)))
    lower = write(folder / "d" / "y.jpg", jpeg_bytes(texture(64, 48, seed=4)))
    out = tmp_path / "out"
    earlier = write(out / "x.jpg", b"an earlier run's output")
    model = ["--model", str(artifact), "--out", str(out)]

    assert cli_main(["blur", str(a), str(b), str(upper), str(lower), *model]) == 2
    err = capsys.readouterr().err
    assert f"x.jpg <- {a}, {b}" in err
    # One file on macOS, Windows and SMB shares, where outputs are often copied.
    assert f"Y.jpg and y.jpg <- {upper}, {lower} (names that differ only by case" in err
    assert "nothing was written" in err and f"the folder that holds them all ({folder})" in err
    assert list(out.rglob("*")) == [earlier] and earlier.read_bytes() == b"an earlier run's output"

    # As the message says: their common folder gives each output its own name.
    assert cli_main(["blur", str(folder), *model]) == 0
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jpg"))
    assert written == ["a/x.jpg", "b/x.jpg", "c/Y.jpg", "d/y.jpg", "x.jpg"]

    # A mask's name counts too: z.jpg's mask would overwrite the image z.jpg.mask.png.
    write(tmp_path / "m" / "z.jpg", jpeg_bytes(texture(64, 48, seed=5)))
    write(tmp_path / "m" / "z.jpg.mask.png", _png(texture(64, 48, seed=6)))
    found = find_inputs([str(tmp_path / "m")])
    with pytest.raises(ServingError, match=r"z\.jpg\.mask\.png <- .*z\.jpg, .*z\.jpg\.mask\.png"):
        blur_batch(runtime, found, tmp_path / "out-m", masks=True)
    assert not (tmp_path / "out-m").exists()


def _gif() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(texture(16, 12, seed=8)).save(buf, "GIF")
    return buf.getvalue()


def test_every_file_found_is_anonymized_or_failed_or_skipped_with_its_reason(
    artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _inputs(tmp_path)  # three images
    folder = tmp_path / "in"
    jpeg = jpeg_bytes(texture(64, 48, seed=4))
    write(folder / "scan.jfif", jpeg)  # a JPEG extension
    write(folder / "noext", jpeg)  # a JPEG by its content: anonymized under its own name
    write(folder / "cut", b"II*\0" + bytes(8))  # a TIFF by its signature, damaged: a failure
    write(folder / "empty.jpg", b"")  # an upload that never arrived: a failure
    write(folder / "anim.gif", _gif())  # formats the runtime cannot anonymize: failures
    write(folder / "anim", _gif())
    write(folder / "clip.heic", b"\0\0\0\x18ftypheic" + bytes(64))
    (folder / "dangling.jpg").symlink_to("gone.jpg")  # a link to nothing: a failure
    (folder / "linked").symlink_to("day1")  # a link to a folder, not followed: a failure
    write(folder / ".hidden.jpg", jpeg)  # skipped
    write(folder / "notes.txt", b"shot list\n")
    write(folder / "README", b"read me\n")
    entries = [p for p in folder.rglob("*") if p.is_symlink() or not p.is_dir()]
    for name in ("HEAD", "objects/ab/cdef"):  # a hidden folder: skipped whole, one entry
        write(folder / ".git" / name, b"not walked")
    out = tmp_path / "out"
    earlier = write(out / "dangling.jpg", b"an earlier run's output")

    assert cli_main(["blur", str(folder), "--model", str(artifact), "--out", str(out)]) == 1
    captured = capsys.readouterr()
    rows = _ledger(out)
    failures = {n: (r.step, r.error or "") for n, r in rows.items() if r.status == "failed"}
    skipped = {n: r.error for n, r in rows.items() if r.status == "skipped"}
    written = sorted(
        p.relative_to(out).as_posix()
        for p in out.rglob("*")
        if p.is_file() and DEFAULT_LEDGER not in p.parts
    )
    assert written == ["day1/phone.jpg", "day1/still.png", "noext", "pano.jpg", "scan.jfif"]
    assert Image.open(out / "noext").format == "JPEG"
    assert not earlier.exists()  # its input failed: no output, an earlier run's neither

    steps = dict.fromkeys(["anim", "anim.gif", "clip.heic", "dangling.jpg", "linked"], "find")
    decode = {"cut": "decode", "empty.jpg": "decode"}
    assert {name: step for name, (step, _) in failures.items()} == {**steps, **decode}
    assert failures["anim.gif"][1].startswith("a GIF image by its extension; only JPEG, PNG")
    assert failures["anim"][1].startswith("a GIF image by its content")
    assert "convert it to one of them" in failures["clip.heic"][1]
    assert failures["dangling.jpg"][1].startswith("a link to gone.jpg, which leads to nothing")
    assert "not followed" in failures["linked"][1]
    assert skipped.keys() == {".hidden.jpg", "notes.txt", "README", ".git"}
    assert skipped[".hidden.jpg"] == "hidden: its name starts with '.'"
    assert str(skipped[".git"]).startswith("hidden folder")
    assert str(skipped["notes.txt"]).startswith("not an image: neither its extension (.txt) nor")
    assert sum(r.status == OK for r in rows.values()) == len(written)

    assert len(entries) + 1 == 16 == len(rows) == len(written) + len(failures) + len(skipped)
    assert "found 16 items: anonymized 5 images" in captured.out
    assert "7 FAILED" in captured.out and "4 skipped" in captured.out
    assert captured.err.count("failed: ") == 7


@contextmanager
def _tmpfs(where: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at `where`: a real disk that is small or read-only. Skips the test where
    mounting needs privileges that it lacks (root with CAP_SYS_ADMIN)."""
    where.mkdir()
    mount = shutil.which("mount")
    done = mount and subprocess.run(
        [mount, "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True
    )
    if not done or done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode() if done else 'no mount'}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def _noise_png(width: int, height: int) -> bytes:
    return _png(np.random.default_rng(0).integers(0, 256, (height, width, 3), np.uint8))


def test_a_full_disk_fails_the_images_that_do_not_fit_and_the_run_goes_on(
    runtime: Runtime, tmp_path: Path
) -> None:
    _inputs(tmp_path)  # three small images (about 40 KB written)
    big = write(tmp_path / "in" / "big.png", _noise_png(400, 300))  # about 200 KB written
    with _tmpfs(tmp_path / "disk", "size=128k") as disk:
        out = disk / "out"
        # One worker: the images are written one after the other, so what fits is known.
        ledger = Ledger(tmp_path / "ledger")
        found = find_inputs([str(tmp_path / "in")])
        report = blur_batch(runtime, found, out, ledger=ledger, workers=1)
        assert [(f.input, f.step) for f in report.failures] == [(str(big), "write")]
        assert "No space left on device" in (report.failures[0].error or "")
        assert (report.found, report.written) == (4, 3)
        assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.*")) == [
            "day1/phone.jpg",
            "day1/still.png",
            "pano.jpg",
        ]
        assert Ledger(tmp_path / "ledger").read()[str(big)].error == report.failures[0].error
        assert not _leftovers(out)


def _fill(disk: Path) -> None:
    full = pytest.raises(OSError, match="No space left on device")
    with (disk / "filler").open("wb", buffering=0) as f, full:
        while True:
            f.write(bytes(1 << 16))


def test_when_the_disk_is_full_every_image_fails_and_a_ledger_there_stops_the_run(
    artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs = _inputs(tmp_path)
    with _tmpfs(tmp_path / "disk", "size=64k") as disk:
        _fill(disk)
        out = disk / "out"
        argv = ["blur", str(tmp_path / "in"), "--model", str(artifact), "--out", str(out)]
        code = cli_main([*argv, "--ledger", str(tmp_path / "ledger")])
        captured = capsys.readouterr()
        assert code == 1
        assert "found 3 items: anonymized 0 images" in captured.out and "3 FAILED" in captured.out
        rows = Ledger(tmp_path / "ledger").read()
        assert sorted(rows) == sorted(str(p) for p in inputs.values())
        assert all(r.step == "write" for r in rows.values())
        assert all("No space left on device" in (r.error or "") for r in rows.values())
        assert "Traceback" not in captured.err
        assert not [p for p in out.rglob("*") if p.is_file()]

        # With the ledger on the full disk, the first row cannot be written: the run stops
        # there, says so, and can be resumed.
        assert cli_main(argv) == 2
        err = capsys.readouterr().err
        assert f"--ledger {out / DEFAULT_LEDGER}: cannot write to it" in err
        assert "No space left on device" in err and "--resume" in err
        assert "Traceback" not in err
        assert not [p for p in out.rglob("*") if p.is_file() and p.stat().st_size]


def test_a_ledger_that_cannot_be_created_is_refused_before_any_image(
    artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _inputs(tmp_path)
    out = tmp_path / "out"
    taken = write(tmp_path / "taken", b"a file, not a folder")
    argv = ["blur", str(tmp_path / "in"), "--model", str(artifact), "--out", str(out)]
    assert cli_main([*argv, "--ledger", str(taken)]) == 2
    err = capsys.readouterr().err
    assert f"--ledger {taken}: cannot write there" in err and "Traceback" not in err
    assert not list(out.rglob("*.jpg")) and taken.read_bytes() == b"a file, not a folder"


@pytest.mark.parametrize("where", ["under a file", "on a read-only disk"])
def test_an_output_folder_that_cannot_be_written_is_refused_up_front(
    artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    _inputs(tmp_path)
    blocker = write(tmp_path / "taken", b"a file, not a folder")
    if where == "under a file":
        out, disk, expected = blocker / "out", nullcontext(), "Not a directory"
    else:
        out, expected = tmp_path / "disk" / "out", "Read-only file system"
        disk = _tmpfs(tmp_path / "disk", "ro,size=64k")
    with disk:
        code = cli_main(["blur", str(tmp_path / "in"), "--model", str(artifact), "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err
        assert f"--out {out}: cannot write there: {expected}" in err
        assert "choose a folder that can be created and written to" in err
        assert not out.exists()
    assert blocker.read_bytes() == b"a file, not a folder"


def _marker_detector(tiles: list[np.ndarray]) -> list[Detections]:
    """Finds magenta blobs (255, 0, 255) in each tile as faces (label 1), box and mask."""
    found = []
    for tile in tiles:
        marked = np.all(tile == (255, 0, 255), axis=2).astype(np.uint8)
        n, labels, stats, _ = cv2.connectedComponentsWithStats(marked)
        boxes, masks = [], []
        for k in range(1, n):
            x, y, w, h = stats[k, :4]
            boxes.append([x, y, x + w, y + h])
            masks.append(labels[y : y + h, x : x + w] == k)
        found.append(
            Detections(np.array(boxes).reshape(-1, 4), [0.9] * len(boxes), [1] * len(boxes), masks)
        )
    return found


def test_an_image_more_than_half_hidden_is_written_and_warned_about(
    runtime: Runtime, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    marked = Runtime(runtime.artifacts, [_marker_detector])
    big, small = texture(120, 100, seed=4), texture(120, 100, seed=5)
    big[:, :80] = (255, 0, 255)  # a face over two thirds of the image (more with its margin)
    small[10:30, 10:30] = (255, 0, 255)
    write(tmp_path / "in" / "big.png", _png(big))
    write(tmp_path / "in" / "small.png", _png(small))
    out = tmp_path / "out"
    with caplog.at_level("WARNING", logger="serving.runtime.one_image"):
        report = blur_batch(marked, find_inputs([str(tmp_path / "in")]), out, sidecar=True)
    assert report.written == 2 and (out / "big.png").is_file()  # written all the same
    assert report.mostly_hidden == 1 and report.mostly_hidden_shown == [
        str(tmp_path / "in" / "big.png")
    ]
    assert f"1 more than half hidden, check them: {tmp_path / 'in' / 'big.png'}" in (
        report.summary()
    )
    warned = [r.getMessage() for r in caplog.records if "more than half" in r.getMessage()]
    assert len(warned) == 1 and "big.png" in warned[0] and f"check {out / 'big.png'}" in warned[0]
    shares = {
        name: json.loads((out / f"{name}.png.json").read_text())["hidden_share"]
        for name in ("big", "small")
    }
    assert shares["big"] > 0.5 > shares["small"] > 0


def test_a_face_across_a_panoramas_seam_is_hidden_on_both_sides(runtime: Runtime) -> None:
    # The runtime as shipped (the artifact's tiling, styles, thresholds, encoding) with a
    # detector that sees exactly the drawn face, so what is tested is the seam, not the model.
    seam = Runtime(runtime.artifacts, [_marker_detector])
    pano = texture(512, 256, seed=7)
    pano[100:130, 496:512] = (255, 0, 255)  # one face: 16 columns at the right end...
    pano[100:130, 0:14] = (255, 0, 255)  # ...and 14 at the left, across the seam
    done = seam.anonymize_bytes(_png(pano))
    assert done.panorama and len(done.detections) == 1  # merged into one object across tiles
    box = done.detections.boxes[0]
    assert box[0] == 496 and box[2] == 512 + 14  # x1 past the width: it wraps
    after = cv2.cvtColor(
        cv2.imdecode(np.frombuffer(done.data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB
    )
    face = np.zeros(pano.shape[:2], bool)
    face[100:130, 496:] = face[100:130, :14] = True
    assert not np.all(after[face] == (255, 0, 255), axis=1).any()  # no face pixel survives
    far = np.ones_like(face)
    far[60:170, 440:] = far[60:170, :70] = False
    np.testing.assert_array_equal(after[far], pano[far])  # the rest is untouched
