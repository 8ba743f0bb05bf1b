"""Image files in and out: the written file is the same kind of file (format, mode, depth,
orientation, JPEG quantization and subsampling, EXIF with GPS, XMP, ICC), nothing that could
show the unanonymized picture survives, and bad input is an ImageError that says what to do."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import warnings

import cv2
import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps, JpegImagePlugin, PngImagePlugin

from serving.runtime.errors import ImageError
from serving.runtime.imagefile import (
    detector_rgb,
    estimate_jpeg_quality,
    from_upright,
    read_image,
    upright,
    write_image,
)
from tests.images import encode, jpeg_bytes, pil_bytes, texture

XMP = (
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-'
    b'syntax-ns#"><rdf:Description xmlns:GPano="http://ns.google.com/photos/1.0/panorama/" '
    b'GPano:ProjectionType="equirectangular"/></rdf:RDF></x:xmpmeta>'
)
GPS = {1: "N", 2: (52.0, 22.0, 0.0), 3: "E", 4: (4.0, 53.0, 0.0)}


def icc() -> bytes:
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def exif(orientation: int | None = None, maker_note: bytes | None = None) -> Image.Exif:
    out = Image.Exif()
    out[0x010F] = "Insta360"
    if orientation is not None:
        out[0x0112] = orientation
    out.get_ifd(0x8825).update(GPS)
    if maker_note is not None:
        out.get_ifd(0x8769)[0x927C] = maker_note
    return out


def jpeg(arr: np.ndarray, **kwargs: object) -> bytes:
    out = io.BytesIO()
    Image.fromarray(arr).save(out, "JPEG", **kwargs)
    return out.getvalue()


def gps_of(data: bytes) -> dict:
    return dict(Image.open(io.BytesIO(data)).getexif().get_ifd(0x8825))


# ---------------------------------------------------------------------------------------------
# JPEG


def test_jpeg_round_trip_keeps_everything_but_the_hidden_pixels() -> None:
    pixels = texture(96, 64, seed=1)
    data = jpeg(pixels, quality=83, exif=exif(), icc_profile=icc(), xmp=XMP, subsampling="4:2:2")
    file = read_image(data)
    assert (file.format, file.mode, file.bit_depth, file.pixels.shape) == (
        "JPEG",
        "RGB",
        8,
        (64, 96, 3),
    )
    assert np.abs(file.pixels.astype(int) - np.asarray(Image.open(io.BytesIO(data)))).max() <= 1
    assert (file.jpeg_quality, file.jpeg_subsampling, file.orientation) == (83, "4:2:2", 1)
    assert file.xmp == XMP and file.icc_profile == icc() and file.dropped == ()
    out = write_image(file, file.pixels)
    again = read_image(out)
    assert again.exif == file.exif and again.xmp == XMP and again.icc_profile == icc()
    assert again.jpeg_qtables == file.jpeg_qtables and again.jpeg_subsampling == "4:2:2"
    assert gps_of(out) == gps_of(data) == GPS
    reread = Image.open(io.BytesIO(out))
    assert reread.info["icc_profile"] == icc() and reread.info["xmp"] == XMP
    assert JpegImagePlugin.get_sampling(reread) == 1
    # Same quantization, so a second generation moves pixels only a little.
    assert np.abs(again.pixels.astype(int) - file.pixels).mean() < 1.5


@pytest.mark.parametrize("quality", [20, 50, 75, 90, 95, 100])
def test_jpeg_quality_is_estimated_from_the_quantization_tables(quality: int) -> None:
    file = read_image(jpeg(texture(32, 32), quality=quality))
    assert abs(file.jpeg_quality - quality) <= 2  # exact, in fact, for IJG-scaled tables
    assert file.jpeg_quality == quality


def test_tables_that_are_not_ijg_scaled_are_estimated_near_and_written_as_they_are() -> None:
    reference = read_image(jpeg(texture(32, 32), quality=80)).jpeg_qtables
    luma = [v + (i % 3 == 0) for i, v in enumerate(reference[0])]  # a camera's own tables
    chroma = [max(v - (i % 4 == 1), 1) for i, v in enumerate(reference[1])]
    data = jpeg(texture(64, 48), qtables=[luma, chroma], subsampling="4:2:0")
    file = read_image(data)
    assert abs(file.jpeg_quality - 80) <= 2
    assert abs(estimate_jpeg_quality(np.array(luma)) - 80) <= 2
    again = read_image(write_image(file, file.pixels))
    assert again.jpeg_qtables == (tuple(luma), tuple(chroma), tuple(chroma))
    assert again.jpeg_subsampling == "4:2:0"


@pytest.mark.parametrize(("subsampling", "name"), [(0, "4:4:4"), (1, "4:2:2"), (2, "4:2:0")])
def test_chroma_subsampling_is_kept(subsampling: int, name: str) -> None:
    file = read_image(jpeg(texture(48, 32), quality=90, subsampling=subsampling))
    assert file.jpeg_subsampling == name
    out = Image.open(io.BytesIO(write_image(file, file.pixels)))
    assert JpegImagePlugin.get_sampling(out) == subsampling


def test_greyscale_and_progressive_jpeg_stay_so() -> None:
    grey = texture(48, 32)[:, :, 0]
    file = read_image(jpeg(grey, quality=70, progressive=True))
    assert (file.mode, file.pixels.shape, file.progressive, file.jpeg_quality) == (
        "L",
        (32, 48),
        True,
        70,
    )
    out = Image.open(io.BytesIO(write_image(file, file.pixels)))
    assert out.mode == "L" and out.info.get("progressive")


@pytest.mark.parametrize("orientation", [6, 8])
def test_rotated_jpeg_is_upright_for_the_detector_and_written_back_as_stored(
    orientation: int,
) -> None:
    stored = texture(80, 50, seed=4)
    data = jpeg_bytes(stored, orientation=orientation, gps=True, quality=92)
    file = read_image(data)
    assert file.orientation == orientation and file.pixels.shape == (50, 80, 3)
    view = upright(file.pixels, file.orientation)
    assert view.shape == (80, 50, 3) and view.flags.c_contiguous
    assert np.array_equal(view, np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data)))))
    # The top-left stored pixel shows top-right (6: turned clockwise) or bottom-left (8).
    corner = view[0, -1] if orientation == 6 else view[-1, 0]
    assert np.array_equal(corner, file.pixels[0, 0])
    back = from_upright(view, file.orientation)
    assert np.array_equal(back, file.pixels)
    out = write_image(file, back)
    written = read_image(out)
    assert written.orientation == orientation and written.pixels.shape == (50, 80, 3)
    assert Image.open(io.BytesIO(out)).getexif()[0x0112] == orientation
    assert gps_of(out) == GPS


def test_every_orientation_matches_what_a_viewer_shows() -> None:
    stored = texture(7, 5, seed=2)
    for orientation in range(1, 9):
        data = pil_bytes(stored, "PNG", exif=exif(orientation))
        file = read_image(data)
        viewer = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))
        assert np.array_equal(upright(file.pixels, orientation), viewer), orientation
        assert np.array_equal(from_upright(viewer, orientation), stored), orientation


def thumbnail_exif(thumbnail: bytes) -> bytes:
    """EXIF (TIFF-structured) with GPS and an IFD1 JPEG thumbnail at its end."""
    tiff = bytearray(exif(orientation=3).tobytes()[6:])
    order = "<" if tiff[:2] == b"II" else ">"
    ifd0 = struct.unpack_from(order + "I", tiff, 4)[0]
    count = struct.unpack_from(order + "H", tiff, ifd0)[0]
    ifd1 = len(tiff)
    struct.pack_into(order + "I", tiff, ifd0 + 2 + 12 * count, ifd1)
    data_at = ifd1 + 2 + 2 * 12 + 4
    tiff += struct.pack(order + "H", 2)
    tiff += struct.pack(order + "HHII", 0x0201, 4, 1, data_at)
    tiff += struct.pack(order + "HHII", 0x0202, 4, 1, len(thumbnail))
    tiff += struct.pack(order + "I", 0) + thumbnail
    return bytes(tiff)


def test_copies_of_the_picture_in_the_metadata_are_not_written() -> None:
    pixels = texture(64, 48, seed=8)
    thumbnail = jpeg(cv2.resize(pixels, (16, 12)), quality=95)
    preview = b"NIKON\x00\x02" + jpeg(pixels[:8, :8], quality=95)
    xmp = XMP.replace(b"/>", b' xmpGImg:image="QUJDREVGR0hJSktMTU5PUA=="/>')
    mpo_frame = jpeg(pixels, quality=50)
    data = jpeg(pixels, exif=b"Exif\x00\x00" + thumbnail_exif(thumbnail), xmp=xmp) + mpo_frame
    file = read_image(data)
    out = write_image(file, file.pixels)
    assert thumbnail not in out and mpo_frame not in out and b"QUJDREVG" not in out
    assert file.orientation == 3 and gps_of(out) == GPS
    assert any("thumbnail" in d for d in file.dropped)
    assert any("after the end of the image" in d for d in file.dropped)
    assert any("XMP embedded images" in d for d in file.dropped)
    # A maker note (where vendors keep previews) is blanked, in JPEG and PNG alike.
    for data in (
        jpeg(pixels, exif=exif(maker_note=preview)),
        pil_bytes(pixels, "PNG", exif=exif(maker_note=preview)),
    ):
        file = read_image(data)
        assert preview[8:40] not in write_image(file, file.pixels)
        assert any("maker note" in d for d in file.dropped) and gps_of(data) == GPS


# ---------------------------------------------------------------------------------------------
# PNG, TIFF, WebP


def png_info() -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", XMP.decode())
    info.add_text("Comment", "street 12")
    return info


@pytest.mark.parametrize(
    ("pixels", "mode", "depth"),
    [
        (texture(40, 30), "RGB", 8),
        (np.dstack([texture(40, 30), texture(40, 30)[:, :, :1]]), "RGBA", 8),
        (texture(40, 30)[:, :, 0], "L", 8),
        (np.dstack([texture(40, 30)[:, :, 0], texture(40, 30, seed=1)[:, :, 0]]), "LA", 8),
    ],
)
def test_png_round_trip_is_lossless_with_its_metadata(
    pixels: np.ndarray, mode: str, depth: int
) -> None:
    data = pil_bytes(pixels, "PNG", exif=exif(orientation=6), icc_profile=icc(), pnginfo=png_info())
    file = read_image(data)
    assert (file.mode, file.bit_depth, file.orientation) == (mode, depth, 6)
    assert np.array_equal(file.pixels, pixels)
    changed = file.pixels.copy()
    changed[5:10, 5:10] = 0
    out = write_image(file, changed)
    again = read_image(out)
    assert np.array_equal(again.pixels, changed) and again.mode == mode
    assert (again.exif, again.xmp, again.icc_profile) == (file.exif, XMP, icc())
    reread = Image.open(io.BytesIO(out))
    assert reread.text["Comment"] == "street 12" and gps_of(out) == GPS


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_sixteen_bit_png_stays_sixteen_bit(channels: int) -> None:
    rng = np.random.default_rng(channels)
    pixels = rng.integers(0, 65536, (30, 40, channels), dtype=np.uint16).squeeze()
    bgr = pixels if channels == 1 else pixels[:, :, [2, 1, 0, 3][:channels]]
    file = read_image(encode(bgr, ".png"))
    assert file.bit_depth == 16 and file.pixels.dtype == np.uint16
    assert np.array_equal(file.pixels, pixels), "colour comes in RGB order"
    again = read_image(write_image(file, file.pixels))
    assert np.array_equal(again.pixels, pixels) and again.bit_depth == 16
    rgb = detector_rgb(file.pixels)
    assert rgb.dtype == np.uint8 and rgb.shape == (30, 40, 3)


def test_tiff_keeps_pixels_depth_compression_and_gps() -> None:
    pixels = texture(40, 30)
    file = read_image(pil_bytes(pixels, "TIFF", exif=exif(orientation=8).tobytes()))
    assert (file.format, file.orientation, file.compression) == ("TIFF", 8, "raw")
    out = write_image(file, file.pixels)
    again = read_image(out)
    assert np.array_equal(again.pixels, pixels) and again.orientation == 8
    assert Image.open(io.BytesIO(out)).getexif().get_ifd(0x8825) == GPS
    file = read_image(pil_bytes(pixels, "TIFF", compression="tiff_lzw", tiffinfo={274: 6}))
    assert (file.compression, file.orientation) == ("tiff_lzw", 6)
    out = write_image(file, file.pixels)
    assert Image.open(io.BytesIO(out)).info["compression"] == "tiff_lzw"
    assert np.array_equal(read_image(out).pixels, pixels)
    grey16 = (np.arange(1200).reshape(30, 40) * 50).astype(np.uint16)
    file = read_image(pil_bytes(grey16, "TIFF"))
    assert file.pixels.dtype == np.uint16
    assert np.array_equal(read_image(write_image(file, file.pixels)).pixels, grey16)
    colour16 = np.random.default_rng(0).integers(0, 65536, (30, 40, 3), dtype=np.uint16)
    file = read_image(encode(colour16, ".tiff"))
    assert file.bit_depth == 16 and file.pixels.shape == (30, 40, 3)
    assert np.array_equal(read_image(write_image(file, file.pixels)).pixels, file.pixels)


def test_lossless_webp_stays_lossless_with_its_exif() -> None:
    pixels = texture(40, 30)
    file = read_image(pil_bytes(pixels, "WEBP", lossless=True, exif=exif(orientation=6).tobytes()))
    assert (file.format, file.lossless, file.orientation) == ("WEBP", True, 6)
    out = write_image(file, file.pixels)
    assert np.array_equal(read_image(out).pixels, pixels) and gps_of(out) == GPS


# ---------------------------------------------------------------------------------------------
# Bad input


def png_header_only(width: int, height: int) -> bytes:
    body = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + body + struct.pack(">I", 0)
    return b"\x89PNG\r\n\x1a\n" + chunk


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"hello, this is text", "not a JPEG, PNG, TIFF or WebP image"),
        (pil_bytes(texture(8, 8), "GIF"), "GIF images are not supported"),
        (jpeg(texture(64, 64))[:300], "truncated"),
        (jpeg(texture(64, 64))[:-400], "truncated"),
        (pil_bytes(texture(64, 64), "PNG")[:-300], "truncated"),
        (pil_bytes(texture(64, 64), "TIFF")[:-300], "TIFF is truncated"),
        (pil_bytes(texture(64, 64), "WEBP")[:-30], "WebP is truncated"),
        (jpeg(texture(8, 8))[:2] + b"\xff\xe0\x00", "truncated"),
        (png_header_only(50_000, 50_000), r"50000x50000 = 2500000000 pixels, over the limit"),
    ],
)
def test_bad_data_is_an_image_error_that_says_what_is_wrong(data: bytes, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        read_image(data)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "TIFF", "WEBP"])
def test_truncation_is_found_whatever_pillow_is_told(
    fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # someone's global
    data = pil_bytes(texture(64, 64), fmt)
    with pytest.raises(ImageError, match=r"truncated|damaged"):
        read_image(data[: len(data) * 2 // 3])


def test_images_over_max_pixels_are_refused_before_decoding_without_warnings() -> None:
    data = jpeg(texture(200, 100))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageError, match=r"200x100 = 20000 pixels, over the limit of 19999"):
            read_image(data, max_pixels=19_999)
        assert read_image(data, max_pixels=20_000).pixels.shape == (100, 200, 3)
        assert read_image(data, max_pixels=None).width == 200


def test_pages_and_frames_that_would_not_be_anonymized_are_refused() -> None:
    frames = [Image.fromarray(texture(16, 16, seed=s)) for s in range(2)]
    out = io.BytesIO()
    frames[0].save(out, "TIFF", save_all=True, append_images=frames[1:])
    with pytest.raises(ImageError, match="multi-page TIFF"):
        read_image(out.getvalue())
    out = io.BytesIO()
    frames[0].save(out, "PNG", save_all=True, append_images=frames[1:])
    with pytest.raises(ImageError, match="animated PNG"):
        read_image(out.getvalue())


def test_pixels_of_another_shape_are_not_written() -> None:
    file = read_image(jpeg(texture(40, 30)))
    with pytest.raises(ValueError, match="stored orientation"):
        write_image(file, np.zeros((40, 30, 3), np.uint8))


def test_the_runtime_imports_none_of_the_training_side() -> None:
    code = (
        "import sys, serving.runtime.anonymize, serving.runtime.imagefile\n"
        "banned = {'torch', 'torchvision', 'data', 'training', 'annotation', 'evaluation'}\n"
        "print([m for m in sys.modules if m.split('.')[0] in banned])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"
