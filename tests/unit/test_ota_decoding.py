"""Rebuilding a model from its zstd forms: the output cap and undecodable frames (ADR 0027)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from roadside.cloud.release.encodings import compress, encoded_forms, make_patch
from roadside.edge.ota.decoding import decode_into
from roadside.shared.errors import TamperedTargetError

BASE = np.random.default_rng(3).normal(0, 0.05, 16_384).astype(np.float32).tobytes()
NEW = BASE[: len(BASE) // 2] + np.random.default_rng(4).normal(0, 0.05, 8_192).astype(np.float32).tobytes()


def payload(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "form.zst"
    path.write_bytes(data)
    return path


def test_a_patch_and_a_compressed_file_rebuild_the_model(tmp_path: Path) -> None:
    out = io.BytesIO()
    assert decode_into(
        "zstd-patch", payload(tmp_path, make_patch(BASE, NEW)), out.write, len(NEW), BASE
    ) == len(NEW)
    assert out.getvalue() == NEW
    out = io.BytesIO()
    decode_into("zstd", payload(tmp_path, compress(NEW)), out.write, len(NEW))
    assert out.getvalue() == NEW


def test_output_past_the_signed_length_is_cut_off(tmp_path: Path) -> None:
    with pytest.raises(TamperedTargetError, match="past the model"):
        decode_into("zstd", payload(tmp_path, compress(NEW + b"x")), io.BytesIO().write, len(NEW))


@pytest.mark.parametrize(
    ("encoding", "data", "base", "why"),
    [
        ("zstd", b"not zstd at all", None, "does not decode"),
        ("zstd-patch", b"", None, "needs the model"),
        ("brotli", b"", None, "unknown encoding"),
    ],
)
def test_undecodable_forms_are_tampered(
    tmp_path: Path, encoding: str, data: bytes, base: bytes | None, why: str
) -> None:
    with pytest.raises(TamperedTargetError, match=why):
        decode_into(encoding, payload(tmp_path, data), io.BytesIO().write, 1 << 20, base)


def test_forms_that_save_nothing_are_not_published() -> None:
    noise = np.random.default_rng(5).bytes(len(NEW))  # encrypted or already compressed: nothing to gain
    assert encoded_forms(noise, {"ab" * 32: BASE}) == []
    unrelated = np.random.default_rng(6).normal(0, 0.05, 16_384).astype(np.float32).tobytes()
    forms = encoded_forms(NEW, {"ab" * 32: unrelated})
    assert [f.encoding for f in forms] == ["zstd"], "a patch from an unrelated model is no better"
    forms = encoded_forms(NEW, {"ab" * 32: BASE})
    assert [f.encoding for f in forms] == ["zstd", "zstd-patch"]
    assert forms[1].filename == "patch-abababababababab.zst"
    assert len(forms[1].data) < 0.6 * len(forms[0].data)  # half of NEW is BASE
