"""No unanonymized copy of the picture leaves the runtime through the file's metadata.

Each carrier below holds a 160x120 preview of the picture where cameras and editors put one:
an EXIF preview behind IFD0's SubIFDs, the EXIF thumbnail (IFD1), an XMP thumbnail under the
older `xapGImg` prefix, a PNG text chunk holding a base64 JPEG, a JPEG comment holding a JPEG,
and a multi-picture (MPF) file's second picture. Through `anonlab blur` and `anonlab serve`,
the output holds no trace of the preview, and the sidecar / JSON answer names what was left out.
Truncated JPEGs are refused, and metadata that inflates into gigabytes costs no memory.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from serving.runtime.batch import DEFAULT_LEDGER, blur_batch
from serving.runtime.errors import ImageError
from serving.runtime.imagefile import read_image, write_image
from serving.runtime.imagefile.check import check_output
from serving.runtime.imagefile.embedded import find_pictures
from serving.runtime.imagefile.metadata import rebuild_exif
from serving.runtime.inputs import find_inputs
from serving.runtime.ledger import Ledger
from serving.runtime.pipeline import Runtime
from serving.runtime.service import ANONYMIZE, AnonymizeServer, ServiceConfig, start_server
from tests.images import texture, write

PICTURE = texture(320, 240, seed=21)


def _jpeg(arr: np.ndarray, **kwargs: object) -> bytes:
    out = io.BytesIO()
    Image.fromarray(arr).save(out, "JPEG", **kwargs)
    return out.getvalue()


PREVIEW = _jpeg(cv2.resize(PICTURE, (160, 120)), quality=90)
PREVIEW_B64 = base64.b64encode(PREVIEW)
# Small enough to pass the length limits on free text: found by what it is.
TINY = _jpeg(cv2.resize(PICTURE, (16, 12)), quality=75)


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def _with_segments(jpeg: bytes, *segments: bytes) -> bytes:
    """`jpeg` with `segments` right after its start-of-image marker."""
    return jpeg[:2] + b"".join(segments) + jpeg[2:]


def _tiff_ifd(
    entries: list[tuple[int, int, int, bytes]], at: int, order: str = "<"
) -> tuple[bytes, int]:
    """An IFD at offset `at` with its out-of-line values; (bytes, end offset)."""
    data_at = at + 2 + 12 * len(entries) + 4
    head, data = [struct.pack(order + "H", len(entries))], b""
    for tag, typ, count, raw in entries:
        if len(raw) <= 4:
            head.append(struct.pack(order + "HHI", tag, typ, count) + raw.ljust(4, b"\x00"))
        else:
            head.append(struct.pack(order + "HHII", tag, typ, count, data_at + len(data)))
            data += raw + b"\x00" * (len(raw) & 1)
    body = b"".join(head) + struct.pack(order + "I", 0) + data
    return body, at + len(body)


def subifd_preview_exif() -> bytes:
    """EXIF whose IFD0 points (tag 0x014A, SubIFDs) to an IFD describing a JPEG preview."""
    make = b"Ladybug\x00"
    ifd0_size = 2 + 12 * 2 + 4 + len(make)
    sub_at = 8 + ifd0_size
    preview_at = sub_at + 2 + 12 * 3 + 4
    sub, _ = _tiff_ifd(
        [
            (0x00FE, 4, 1, struct.pack("<I", 1)),
            (0x0201, 4, 1, struct.pack("<I", preview_at)),
            (0x0202, 4, 1, struct.pack("<I", len(PREVIEW))),
        ],
        sub_at,
    )
    entries = [(0x010F, 2, len(make), make), (0x014A, 4, 1, struct.pack("<I", sub_at))]
    ifd0, end = _tiff_ifd(entries, 8)
    assert end == sub_at
    return b"II*\x00" + struct.pack("<I", 8) + ifd0 + sub + PREVIEW


def ifd1_thumbnail_exif() -> bytes:
    """EXIF with a GPS IFD and a standard IFD1 JPEG thumbnail."""
    exif = Image.Exif()
    exif[0x010F] = "Ladybug"
    exif.get_ifd(0x8825).update({1: "N", 2: (52.0, 22.0, 0.0)})
    tiff = bytearray(exif.tobytes()[6:])
    order = "<" if tiff[:2] == b"II" else ">"
    ifd0 = struct.unpack_from(order + "I", tiff, 4)[0]
    count = struct.unpack_from(order + "H", tiff, ifd0)[0]
    struct.pack_into(order + "I", tiff, ifd0 + 2 + 12 * count, len(tiff))
    ifd1, _ = _tiff_ifd(
        [
            (0x0201, 4, 1, struct.pack(order + "I", len(tiff) + 2 + 24 + 4)),
            (0x0202, 4, 1, struct.pack(order + "I", len(PREVIEW))),
        ],
        len(tiff),
        order,
    )
    return bytes(tiff) + ifd1 + PREVIEW


def xmp_with_thumbnail() -> bytes:
    # As Adobe writes it: base64 in lines of 76 characters joined by the &#xA; entity.
    lines = [PREVIEW_B64[i : i + 76] for i in range(0, len(PREVIEW_B64), 76)]
    return (
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/'
        b'22-rdf-syntax-ns#"><rdf:Description rdf:about="" xmlns:xap="http://ns.adobe.com/xap/'
        b'1.0/" xmlns:xapGImg="http://ns.adobe.com/xap/1.0/g/img/"><xap:Thumbnails><rdf:Alt>'
        b'<rdf:li rdf:parseType="Resource"><xapGImg:width>160</xapGImg:width><xapGImg:image>'
        + b"&#xA;".join(lines)
        + b"</xapGImg:image></rdf:li></rdf:Alt></xap:Thumbnails><xap:CreatorTool>Camera 2"
        b"</xap:CreatorTool></rdf:Description></rdf:RDF></x:xmpmeta>"
    )


def carriers() -> dict[str, tuple[bytes, str, bytes]]:
    """name -> (input file, what the sidecar must name, the copy of the picture it holds)."""
    plain = _jpeg(PICTURE, quality=88)
    mpf = _with_segments(plain, _segment(0xE2, b"MPF\x00II*\x00" + bytes(40))) + PREVIEW
    return {
        "subifd.jpg": (
            _jpeg(PICTURE, exif=b"Exif\x00\x00" + subifd_preview_exif()),
            "SubIFDs",
            PREVIEW,
        ),
        "ifd1.jpg": (
            _jpeg(PICTURE, exif=b"Exif\x00\x00" + ifd1_thumbnail_exif()),
            "thumbnail",
            PREVIEW,
        ),
        "xmp.jpg": (_jpeg(PICTURE, xmp=xmp_with_thumbnail()), "XMP embedded images", PREVIEW),
        "text.png": (_png_with_text(PREVIEW), "PNG text 'Comment'", PREVIEW),
        "small-text.png": (_png_with_text(TINY), "PNG text 'Comment' (holds a picture", TINY),
        "comment.jpg": (_with_segments(plain, _segment(0xFE, PREVIEW)), "JPEG comment", PREVIEW),
        "small-comment.jpg": (
            _with_segments(plain, _segment(0xFE, TINY)),
            "JPEG comment (holds a picture",
            TINY,
        ),
        "mpf.jpg": (mpf, "multi-picture", PREVIEW),
    }


def _png_with_text(picture: bytes) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text(
        "Comment", "thumbnail: data:image/jpeg;base64," + base64.b64encode(picture).decode()
    )
    png = io.BytesIO()
    Image.fromarray(PICTURE).save(png, "PNG", pnginfo=info)
    return png.getvalue()


def assert_no_copy(out: bytes, name: str, picture: bytes) -> None:
    encoded = base64.b64encode(picture)
    assert picture not in out and picture[20:200] not in out, name
    assert encoded[:60] not in out and encoded[200:260] not in out, name
    if name.endswith(".jpg"):
        assert out.count(b"\xff\xd8\xff") == 1, f"{name}: a second JPEG in the output"
        decoded = np.asarray(Image.open(io.BytesIO(out)))
        assert decoded.shape == PICTURE.shape, name


@pytest.fixture(scope="module")
def runtime(shared_artifact: Path) -> Runtime:
    return Runtime.load([shared_artifact])


def test_every_carrier_is_found_in_the_input() -> None:
    """The carriers are real: each input holds the preview where a reader would find it."""
    for name, (data, _, _) in carriers().items():
        assert find_pictures(data[2:] if name.endswith(".jpg") else data[8:]), name


def test_blur_writes_no_copy_of_the_picture_and_names_what_it_left_out(
    runtime: Runtime, tmp_path: Path
) -> None:
    inputs = carriers()
    for name, (data, _, _) in inputs.items():
        write(tmp_path / "in" / name, data)
    out = tmp_path / "out"
    report = blur_batch(runtime, find_inputs([str(tmp_path / "in")]), out, sidecar=True)
    assert not report.failures and report.written == len(inputs)
    for name, (_, named, picture) in inputs.items():
        assert_no_copy((out / name).read_bytes(), name, picture)
        dropped = json.loads((out / f"{name}.json").read_text())["metadata_dropped"]
        assert any(named in d for d in dropped), (name, dropped)


@pytest.fixture(scope="module")
def server(runtime: Runtime) -> Iterator[AnonymizeServer]:
    srv = start_server(runtime, "127.0.0.1", 0, ServiceConfig(max_concurrency=1, max_queue=2))
    srv.wait_ready(60)
    yield srv
    srv.stop(grace=1)


def _post(server: AnonymizeServer, body: bytes, query: str = "") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("POST", ANONYMIZE + query, body=body)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_serve_answers_no_copy_of_the_picture_and_names_what_it_left_out(
    server: AnonymizeServer,
) -> None:
    for name, (data, named, picture) in carriers().items():
        status, body = _post(server, data, "?detections=true")
        assert status == 200, (name, body[:300])
        answer = json.loads(body)
        assert_no_copy(base64.b64decode(answer["image"]), name, picture)
        assert any(named in d for d in answer["metadata_dropped"]), name


def test_a_truncated_jpeg_with_an_end_marker_is_refused(
    runtime: Runtime, server: AnonymizeServer, tmp_path: Path
) -> None:
    whole = _jpeg(PICTURE, quality=95)
    cut = whole[: len(whole) * 2 // 3] + b"\xff\xd9"
    with pytest.raises(ImageError, match="truncated"):
        read_image(cut)
    status, body = _post(server, cut)
    assert status == 422 and b"truncated" in body
    write(tmp_path / "in" / "cut.jpg", cut)
    report = blur_batch(runtime, find_inputs([str(tmp_path / "in")]), tmp_path / "out")
    assert report.written == 0 and not (tmp_path / "out" / "cut.jpg").exists()
    (failure,) = Ledger(tmp_path / "out" / DEFAULT_LEDGER).read().values()
    assert failure.step == "decode" and "truncated" in (failure.error or "")


def test_exif_keeps_orientation_time_gps_and_camera_and_nothing_else() -> None:
    exif = Image.Exif()
    exif[0x010F], exif[0x0110], exif[0x0112] = "Ladybug", "LB5", 6
    exif[0x010E] = "free text about the street"  # ImageDescription: not on the allowlist
    exif.get_ifd(0x8769).update({0x9003: "2026:05:04 10:11:12", 0x9286: b"ASCII\x00\x00\x00hi"})
    exif.get_ifd(0x8825).update({1: "N", 2: (52.0, 22.0, 0.0), 3: "E", 4: (4.0, 53.0, 0.0)})
    dropped: list[str] = []
    rebuilt = rebuild_exif(exif.tobytes()[6:], dropped)
    assert rebuilt is not None
    again = Image.Exif()
    again.load(b"Exif\x00\x00" + rebuilt)
    assert (again[0x010F], again[0x0110], again[0x0112]) == ("Ladybug", "LB5", 6)
    assert 0x010E not in again
    assert dict(again.get_ifd(0x8769)) == {0x9003: "2026:05:04 10:11:12"}
    assert dict(again.get_ifd(0x8825)) == dict(exif.get_ifd(0x8825))
    assert any("0x010E" in d for d in dropped) and any("user comment" in d for d in dropped)
    assert rebuild_exif(rebuilt, []) == rebuilt, "rebuilding a rebuilt block changes nothing"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "TIFF", "WEBP"])
def test_the_output_check_passes_clean_files_and_refuses_a_second_picture(fmt: str) -> None:
    clean = io.BytesIO()
    Image.fromarray(PICTURE).save(clean, fmt)
    check_output(clean.getvalue(), fmt)  # a plain file of each format passes
    # The same file with a picture in its metadata, written by a tool that is not the runtime.
    text = "x " + PREVIEW_B64.decode()
    carrier = io.BytesIO()
    if fmt == "JPEG":
        data = _with_segments(clean.getvalue(), _segment(0xE1, b"Vendor\x00" + PREVIEW[:400]))
    elif fmt == "PNG":
        info = PngImagePlugin.PngInfo()
        info.add_text("Title", text, zip=True)  # compressed: found after inflating
        Image.fromarray(PICTURE).save(carrier, fmt, pnginfo=info)
        data = carrier.getvalue()
    elif fmt == "TIFF":
        Image.fromarray(PICTURE).save(carrier, fmt, tiffinfo={270: text})
        data = carrier.getvalue()
    else:
        Image.fromarray(PICTURE).save(carrier, fmt, xmp=text.encode())
        data = carrier.getvalue()
    with pytest.raises(ImageError, match="was not written: it would still hold"):
        check_output(data, fmt)
    hex_text = clean.getvalue()[:2] + _segment(0xFE, PREVIEW[:64].hex().encode())
    if fmt == "JPEG":
        with pytest.raises(ImageError, match="hex text of a JPEG"):
            check_output(hex_text + clean.getvalue()[2:], fmt)


def test_the_output_check_refuses_bytes_after_the_image() -> None:
    for fmt in ("JPEG", "PNG", "WEBP"):
        clean = io.BytesIO()
        Image.fromarray(PICTURE).save(clean, fmt)
        with pytest.raises(ImageError, match="follow the end of the image"):
            check_output(clean.getvalue() + PREVIEW, fmt)


def test_a_read_file_written_back_passes_the_output_check() -> None:
    for name, (data, _, _) in carriers().items():
        file = read_image(data)
        check_output(write_image(file, file.pixels), file.format)  # raises if anything leaked
        assert name


INFLATING_PNG = r"""
import resource, sys, zlib, struct
sys.path.insert(0, sys.argv[1])
from serving.runtime.imagefile import read_image, write_image

def chunk(ctype, body):
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body))

packer = zlib.compressobj(9)
xmp = b"".join(packer.compress(bytes(1 << 20)) for _ in range(512)) + packer.flush()
png = open(sys.argv[2], "rb").read()
body = b"XML:com.adobe.xmp\x00\x01\x00\x00\x00" + xmp
bomb = png[:33] + chunk(b"iTXt", body) + png[33:]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
file = read_image(bomb)
out = write_image(file, file.pixels)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(len(bomb), len(out), (after - before) // 1024, file.dropped)
"""


def test_metadata_that_inflates_to_512_mb_costs_no_memory(tmp_path: Path) -> None:
    png = tmp_path / "plain.png"
    Image.fromarray(PICTURE).save(png, "PNG")
    repo = Path(__file__).resolve().parents[2]
    run = subprocess.run(
        [sys.executable, "-c", INFLATING_PNG, str(repo), str(png)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    size_in, size_out, grown_mb, dropped = run.stdout.split(maxsplit=3)
    assert int(size_in) > 400_000, "the input really carries the compressed 512 MB"
    assert int(size_out) < 400_000 and int(grown_mb) < 64, run.stdout
    assert "inflates past" in dropped
