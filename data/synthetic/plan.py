"""Which capture session, frame and kind an image index is, and the seeded random streams
every draw comes from (image `i` depends on the seed and `i` only)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data.config import SyntheticConfig

KINDS = ("normal", "empty", "near_duplicate", "dark", "blurry")

_GOLDEN = 0.6180339887498949
FRAME_SECONDS = 2.0  # between consecutive frames of a drive
STEP_M = 12.0  # distance driven between consecutive frames

# Random streams: every draw is seeded from (seed, stream, n), so no image depends on another.
FRAME_STREAM, SESSION_STREAM, _KIND_STREAM, _PANORAMA_STREAM = 0, 1, 2, 3


@dataclass(frozen=True)
class Plan:
    index: int
    session: int
    frame: int
    kind: str
    panorama: bool


def _entropy(seed: int) -> int:
    # SeedSequence takes non-negative integers only; config seeds may be negative.
    return seed % 2**64


def stream_rng(cfg: SyntheticConfig, stream: int, n: int) -> np.random.Generator:
    return np.random.default_rng([_entropy(cfg.seed), stream, n])


def _weyl(cfg: SyntheticConfig, stream: int, n: int) -> float:
    # A golden-ratio sequence: shares hold closely over any prefix of indices (little binomial
    # noise for small counts), and element n needs nothing but n.
    offset = np.random.default_rng([_entropy(cfg.seed), stream]).random()
    return float((offset + n * _GOLDEN) % 1.0)


def make_plan(cfg: SyntheticConfig, index: int) -> Plan:
    session, frame = divmod(index, cfg.frames_per_session)
    return Plan(
        index=index,
        session=session,
        frame=frame,
        kind=_kind(cfg, index),
        panorama=is_panorama(cfg, session),
    )


def is_panorama(cfg: SyntheticConfig, session: int) -> bool:
    # Whole drives are panoramic: one camera per drive.
    return _weyl(cfg, _PANORAMA_STREAM, session) < cfg.panorama_share


def _raw_kind(cfg: SyntheticConfig, index: int) -> str:
    frames = cfg.frames_per_session
    # The first frame of a drive has nothing to repeat; the others carry its share instead.
    duplicate = 0.0 if frames == 1 else cfg.near_duplicate_share * frames / (frames - 1)
    shares = [("empty", cfg.empty_share), ("dark", cfg.dark_share), ("blurry", cfg.blurry_share)]
    total = duplicate + sum(share for _, share in shares)
    scale = 1.0 / total if total > 1.0 else 1.0
    u = _weyl(cfg, _KIND_STREAM, index)
    edge = 0.0
    for kind, share in shares:
        edge += share * scale
        if u < edge:
            return kind
    # Near-duplicates take the top of the unit interval, so that first frames (which cannot be
    # one) leave every other kind its share.
    if u >= 1.0 - duplicate * scale and index % frames != 0:
        return "near_duplicate"
    return "normal"


def _kind(cfg: SyntheticConfig, index: int) -> str:
    kind = _raw_kind(cfg, index)
    # Repeating a dark or blurred frame would make the pair ambiguous for review (which reason
    # rejects it?); a stopped vehicle repeating such a frame is drawn as an ordinary frame.
    if kind == "near_duplicate" and _raw_kind(cfg, index - 1) in ("dark", "blurry"):
        return "normal"
    return kind
