"""Label Studio's brush RLE (the thi.ng rle-pack stream of an RGBA image): decode and encode."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class _Bits:
    """A big-endian bit reader over bytes (the rle-pack stream Label Studio writes)."""

    def __init__(self, data: bytes) -> None:
        self.data = data + bytes(8)  # reads near the end take 8 bytes at a time
        self.size = len(data) * 8
        self.pos = 0
        self._bits: np.ndarray | None = None

    def read(self, n: int) -> int:
        """The next `n` (<= 32) bits as an unsigned integer."""
        start = self.pos >> 3
        chunk = int.from_bytes(self.data[start : start + 8], "big")
        value = (chunk >> (64 - (self.pos & 7) - n)) & ((1 << n) - 1)
        self.pos += n
        return value

    def words(self, count: int, size: int) -> np.ndarray:
        """The next `count` words of `size` bits each."""
        if count <= 4:
            return np.array([self.read(size) for _ in range(count)], np.int64)
        if self._bits is None:
            self._bits = np.unpackbits(np.frombuffer(self.data, np.uint8))
        block = self._bits[self.pos : self.pos + count * size].reshape(count, size)
        self.pos += count * size
        return block.astype(np.int64) @ (1 << np.arange(size - 1, -1, -1, dtype=np.int64))


def decode_brush_rle(rle: Sequence[int], width: int, height: int) -> np.ndarray:
    """A Label Studio brush RLE (`value.rle`) as a bool mask: its RGBA image's alpha > 0.

    The stream (thi.ng rle-pack): 32 bits value count, 5 bits word size - 1, four 4-bit run
    length sizes - 1; then runs: 1 bit repeat flag, 2 bits run size index, the run length - 1,
    then one word (repeat) or that many words (literal). Raises ValueError when the stream is
    not such an image of `width` x `height`.
    """
    values = np.asarray(rle)
    if values.ndim != 1 or values.dtype.kind not in "iu" or len(values) < 7:
        raise ValueError("not a list of bytes long enough for the header")
    if values.min() < 0 or values.max() > 255:
        raise ValueError("values outside 0..255")
    bits = _Bits(values.astype(np.uint8).tobytes())
    count = bits.read(32)
    expected = width * height * 4
    if count != expected:
        raise ValueError(f"it holds {count} values, a {width}x{height} RGBA image has {expected}")
    word = bits.read(5) + 1
    run_sizes = [bits.read(4) + 1 for _ in range(4)]
    out = np.zeros(count, np.uint8 if word <= 8 else np.uint32)
    i = 0
    while i < count:
        repeat = bits.read(1)
        j = i + 1 + bits.read(run_sizes[bits.read(2)])
        if j > count:
            raise ValueError(f"a run reaches value {j}, past the {count} the header announces")
        if repeat:
            out[i:j] = bits.read(word)
        else:
            out[i:j] = bits.words(j - i, word)
        i = j
        if bits.pos > bits.size:
            raise ValueError("the stream ends before the image does")
    return out.reshape(height, width, 4)[:, :, 3] > 0


# The encoder's run length fields (bits), as Label Studio's SDK writes them: a run of up to
# 2 ** 16 values fits the largest.
_RUN_BITS = (3, 4, 8, 16)


def encode_brush_rle(mask: np.ndarray) -> list[int]:
    """A bool (H, W) mask as a Label Studio brush RLE (`value.rle`): the RGBA image whose four
    channels are 255 on the mask and 0 elsewhere, written as repeat runs of 8-bit words in the
    stream `decode_brush_rle` reads: the bytes the SDK's `mask2rle` writes."""
    flat = np.asarray(mask, bool).reshape(-1)
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate([[0], change])
    lengths = np.diff(np.concatenate([starts, [flat.size]])) * 4
    fields = [f"{flat.size * 4:032b}", f"{8 - 1:05b}"] + [f"{b - 1:04b}" for b in _RUN_BITS]
    for start, length in zip(starts.tolist(), lengths.tolist(), strict=True):
        word = f"{255 if flat[start] else 0:08b}"
        while length > 0:
            run = min(length, 1 << _RUN_BITS[-1])
            size = next(k for k, bits in enumerate(_RUN_BITS) if run <= 1 << bits)
            fields.append(f"1{size:02b}{run - 1:0{_RUN_BITS[size]}b}{word}")
            length -= run
    bits = "".join(fields)
    bits += "0" * (8 - len(bits) % 8)  # 1 to 8 zero bits, as the SDK pads
    return list(int(bits, 2).to_bytes(len(bits) // 8, "big"))


# ---------------------------------------------------------------------------------------------
