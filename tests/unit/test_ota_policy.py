"""The device's OTA policy: pure decisions over signed target data, no sockets, no disks."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tuf.api import exceptions as tuf_errors

from roadside.edge.ota.policy import (
    AgentProfile,
    ModelIndex,
    ModelTarget,
    OtaRefusal,
    Transfer,
    Verdict,
    check_target_path,
    compare_versions,
    decide,
    form_problem,
    parse_index,
    parse_target,
    plan_transfers,
    refusal_for,
    shapes_compatible,
)
from roadside.shared.errors import (
    BadSignatureError,
    IntegrityError,
    OversizeError,
    RollbackError,
    UnsafePathError,
)

SHA = "ab" * 32
PATH = "models/detector/2.0.0/detector.onnx"
CUSTOM: dict[str, Any] = {
    "name": "detector",
    "model_version": "2.0.0",
    "opset": 17,
    "input_shape": ["batch", 3, 320, 320],
    "labels": ["car", "truck", "pedestrian", "cyclist"],
    "min_agent_version": "0.1.0",
}
AGENT = AgentProfile(
    version="0.1.0",
    max_bytes=10_000_000,
    labels=frozenset({"car", "pedestrian"}),
    input_shape=(1, 3, 320, 320),
    max_opset=21,
)


def target(**changes: Any) -> ModelTarget:
    parsed = parse_target(PATH, 1_700_000, {"sha256": SHA}, CUSTOM)
    assert isinstance(parsed, ModelTarget)
    return replace(parsed, **changes)


def reason(outcome: object) -> str:
    assert isinstance(outcome, OtaRefusal), outcome
    return outcome.reason


# -- versions --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("higher", "lower"),
    [
        ("1.10.0", "1.9.9"),
        ("2.0.0", "1.99.99"),
        ("det-2025.04.10", "det-2025.04.2"),
        ("1.0.1", "1.0.0"),
        ("1.0.0", "1.0"),
    ],
)
def test_versions_compare_naturally(higher: str, lower: str) -> None:
    assert compare_versions(higher, lower) == 1
    assert compare_versions(lower, higher) == -1
    assert compare_versions(higher, higher) == 0


@given(
    st.lists(st.integers(0, 10_000), min_size=1, max_size=4),
    st.lists(st.integers(0, 10_000), min_size=1, max_size=4),
)
def test_numeric_versions_order_like_tuples(a: list[int], b: list[int]) -> None:
    expected = (a > b) - (a < b)
    assert compare_versions(".".join(map(str, a)), ".".join(map(str, b))) == expected


# -- paths -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "models/../../etc/passwd.onnx",
        "models/detector/2.0.0/../../../../etc/x.onnx",
        "models/detector/../detector/2.0.0/x.onnx",
        "/models/detector/2.0.0/x.onnx",
        "models/detector/2.0.0\\..\\..\\x.onnx",
        "models\\detector\\2.0.0\\x.onnx",
        "models/detector/%2e%2e/x.onnx",
        "models/detector/2.0.0/x.onnx\x00.png",
        "models//detector/2.0.0/x.onnx",
        "models/detector/./2.0.0/x.onnx",
        "models/detector/2.0.0/.hidden.onnx",
        "models/detector/2.0.0/x.onnx/",
        "models/detector/2.0.0/x.exe",
        "models/other/2.0.0/x.onnx",
        "models/detector/x.onnx",
        "models/detector/2.0.0/sub/x.onnx",
        "C:/models/detector/2.0.0/x.onnx",
        "models/detector/2.0.0/x\u2024onnx",
        "models/detеctor/2.0.0/x.onnx",  # a Cyrillic "е"
        "file:///etc/x.onnx",
        "",
    ],
)
def test_paths_that_leave_the_models_folder_are_refused(path: str) -> None:
    assert reason(check_target_path(path, "detector")) == UnsafePathError.reason


def test_the_expected_layout_is_accepted() -> None:
    assert check_target_path("models/detector/2.0.0+cpu/detector_int8.onnx", "detector") is None


_SEGMENT = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,20}", fullmatch=True)


@given(_SEGMENT, _SEGMENT)
def test_any_plain_version_and_file_name_is_accepted(version: str, stem: str) -> None:
    assert check_target_path(f"models/detector/{version}/{stem}.onnx", "detector") is None


@given(st.lists(_SEGMENT | st.sampled_from(["..", ".", ""]), min_size=1, max_size=6))
def test_no_path_with_a_dot_segment_is_ever_accepted(parts: list[str]) -> None:
    path = "/".join(["models", "detector", *parts, "x.onnx"])
    if any(p in ("..", ".", "") for p in parts):
        assert check_target_path(path, "detector") is not None


# -- parsing ---------------------------------------------------------------------


def test_a_well_formed_target_parses() -> None:
    parsed = target()
    assert parsed.version == "2.0.0"
    assert parsed.input_shape == ("batch", 3, 320, 320)
    assert parsed.labels == ("car", "truck", "pedestrian", "cyclist")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("model_version", "../2"),
        ("model_version", 2),
        ("min_agent_version", None),
        ("name", "det/ector"),
        ("opset", True),
        ("opset", 0),
        ("input_shape", "1x3x320x320"),
        ("input_shape", [1, -3]),
        ("labels", []),
        ("labels", ["car", ""]),
    ],
)
def test_malformed_roadside_fields_are_refused(field: str, value: object) -> None:
    assert reason(parse_target(PATH, 10, {"sha256": SHA}, CUSTOM | {field: value})) == "bad_metadata"


def test_a_target_without_sha256_or_fields_is_refused() -> None:
    assert reason(parse_target(PATH, 10, {"sha512": SHA * 2}, CUSTOM)) == "bad_metadata"
    assert reason(parse_target(PATH, 10, {"sha256": SHA}, None)) == "bad_metadata"


def test_index_parses_and_checks_itself() -> None:
    body = {"format": 1, "name": "detector", "latest": "2.0.0", "versions": {"2.0.0": PATH}}
    assert parse_index(json.dumps(body).encode(), "detector") == ModelIndex(
        "detector", "2.0.0", {"2.0.0": PATH}
    )
    assert reason(parse_index(json.dumps(body).encode(), "plates")) == "bad_metadata"
    assert reason(parse_index(json.dumps(body | {"latest": "3.0.0"}).encode(), "detector")) == "bad_metadata"
    assert (
        reason(parse_index(json.dumps(body | {"versions": {"2.0.0": 7}}).encode(), "detector"))
        == "bad_metadata"
    )
    assert reason(parse_index(b"\xff not json", "detector")) == "bad_metadata"


# -- decisions -------------------------------------------------------------------


def test_a_newer_compatible_model_is_installed() -> None:
    assert decide(target(), name="detector", running_version="1.0.0", agent=AGENT) is Verdict.INSTALL
    assert decide(target(), name="detector", running_version=None, agent=AGENT) is Verdict.INSTALL


def test_the_running_version_is_up_to_date() -> None:
    assert decide(target(), name="detector", running_version="2.0.0", agent=AGENT) is Verdict.UP_TO_DATE


def test_an_older_version_is_a_rollback() -> None:
    outcome = decide(target(), name="detector", running_version="2.0.1", agent=AGENT)
    assert reason(outcome) == RollbackError.reason


def test_an_unsafe_path_is_refused_before_anything_else() -> None:
    evil = target(path="models/../../etc/x.onnx")
    assert reason(decide(evil, name="detector", running_version="2.0.0", agent=AGENT)) == "unsafe_path"


def test_path_and_fields_must_agree() -> None:
    assert (
        reason(decide(target(version="3.0.0"), name="detector", running_version=None, agent=AGENT))
        == "bad_metadata"
    )
    assert (
        reason(decide(target(name="plates"), name="detector", running_version=None, agent=AGENT))
        == "bad_metadata"
    )


def test_over_the_cap_is_oversize() -> None:
    outcome = decide(target(length=AGENT.max_bytes + 1), name="detector", running_version=None, agent=AGENT)
    assert reason(outcome) == OversizeError.reason
    exact = decide(target(length=AGENT.max_bytes), name="detector", running_version=None, agent=AGENT)
    assert exact is Verdict.INSTALL


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"min_agent_version": "0.2.0"}, "needs agent 0.2.0"),
        ({"opset": 22}, "opset 22"),
        ({"labels": ("car", "truck")}, "pedestrian"),
        ({"input_shape": ("batch", 3, 640, 640)}, "takes input"),
        ({"input_shape": (3, 320, 320)}, "takes input"),
    ],
)
def test_incompatible_models_are_refused(changes: dict[str, Any], why: str) -> None:
    outcome = decide(target(**changes), name="detector", running_version="1.0.0", agent=AGENT)
    assert isinstance(outcome, OtaRefusal)
    assert outcome.reason == "incompatible_model"
    assert why in outcome.detail


def test_an_agent_without_expectations_accepts_any_labels_and_shape() -> None:
    open_agent = AgentProfile(version="9.0.0", max_bytes=1 << 30)
    odd = target(labels=("bus",), input_shape=(1, 1, 64, 64), opset=99)
    assert decide(odd, name="detector", running_version=None, agent=open_agent) is Verdict.INSTALL


def test_dynamic_axes_match_any_size() -> None:
    assert shapes_compatible((1, 3, 320, 320), ("batch", 3, 320, 320))
    assert shapes_compatible(("n", 3, "h", "w"), (4, 3, 320, 320))
    assert not shapes_compatible((1, 3, 320, 320), (1, 1, 320, 320))


# -- python-tuf's exceptions -----------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "target_phase", "expected"),
    [
        (tuf_errors.LengthOrHashMismatchError("hash"), True, "tampered_target"),
        (tuf_errors.LengthOrHashMismatchError("hash"), False, "inconsistent_metadata"),
        (tuf_errors.UnsignedMetadataError("sig"), False, "bad_signature"),
        (tuf_errors.ExpiredMetadataError("old"), False, "expired_metadata"),
        (tuf_errors.BadVersionNumberError("version"), False, "inconsistent_metadata"),
        (tuf_errors.DownloadLengthMismatchError("big"), True, "oversize"),
        (tuf_errors.RepositoryError("odd"), False, "bad_metadata"),
    ],
)
def test_tuf_errors_become_refusals(exc: Exception, target_phase: bool, expected: str) -> None:
    assert reason(refusal_for(exc, downloading_target=target_phase)) == expected


@pytest.mark.parametrize(
    "exc",
    [
        tuf_errors.DownloadHTTPError("503", 503),
        tuf_errors.SlowRetrievalError(),
        tuf_errors.DownloadError("reset"),
    ],
)
def test_transport_trouble_is_not_a_refusal(exc: Exception) -> None:
    assert refusal_for(exc, downloading_target=True) is None


def test_a_refusal_names_its_error_class() -> None:
    error = OtaRefusal("bad_signature", "timestamp was signed by 0/1 keys").error()
    assert isinstance(error, BadSignatureError)
    assert error.reason == "bad_signature"
    assert type(OtaRefusal("something_new", "").error()) is IntegrityError


# -- transfers (ADR 0027) --------------------------------------------------------

BASE_SHA = "cd" * 32
PATCH = {
    "path": "models/detector/2.0.0/patch-cdcdcdcdcdcdcdcd.zst",
    "encoding": "zstd-patch",
    "base_sha256": BASE_SHA,
}
ZST = {"path": "models/detector/2.0.0/model.zst", "encoding": "zstd"}


def with_transfers(entries: object) -> ModelTarget:
    parsed = parse_target(PATH, 1_700_000, {"sha256": SHA}, {**CUSTOM, "transfers": entries})
    assert isinstance(parsed, ModelTarget)
    return parsed


def test_a_patch_from_a_held_model_comes_first_then_the_compressed_file() -> None:
    parsed = with_transfers([ZST, PATCH])
    assert plan_transfers(parsed, {BASE_SHA}) == [
        Transfer(PATCH["path"], "zstd-patch", BASE_SHA),
        Transfer(ZST["path"], "zstd"),
    ]
    assert plan_transfers(parsed, {"ef" * 32}) == [Transfer(ZST["path"], "zstd")]
    assert plan_transfers(target(), {BASE_SHA}) == [], "an older release lists no forms: the model file"


@pytest.mark.parametrize(
    "entry",
    [
        {**ZST, "encoding": "brotli"},
        {**ZST, "path": "models/detector/1.0.0/model.zst"},  # another version's folder
        {**ZST, "path": "models/other/2.0.0/model.zst"},
        {**ZST, "path": "models/detector/2.0.0/../../x.zst"},
        {**ZST, "path": PATH},  # the model itself
        {**PATCH, "base_sha256": "not-a-hash"},
        {"encoding": "zstd"},
        {**ZST, "encoding": ["zstd"]},  # unhashable: left out, not a TypeError
        {**PATCH, "base_sha256": ["cd"]},
        "models/detector/2.0.0/model.zst",
    ],
)
def test_malformed_transfers_are_left_out_not_refused(entry: object) -> None:
    parsed = with_transfers([entry])
    assert parsed.transfers == ()
    assert decide(parsed, name="detector", running_version="1.0.0", agent=AGENT) is Verdict.INSTALL


def test_transfers_that_are_not_a_list_are_ignored() -> None:
    assert with_transfers({"path": ZST["path"]}).transfers == ()


def test_a_form_must_be_signed_as_what_the_model_lists() -> None:
    parsed = with_transfers([PATCH])
    (patch,) = parsed.transfers
    signed = {"encoding_of": PATH, "encoding": "zstd-patch", "base_sha256": BASE_SHA}
    assert form_problem(patch, signed, parsed) is None
    assert form_problem(patch, {**signed, "encoding_of": "models/detector/1.0.0/detector.onnx"}, parsed)
    assert form_problem(patch, {**signed, "base_sha256": "ef" * 32}, parsed)
    assert form_problem(patch, {**signed, "encoding": "zstd"}, parsed)
    assert form_problem(patch, None, parsed)
