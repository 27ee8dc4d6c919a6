"""A camera's password never reaches a log line, an error or a report: reconnects of a real
(loopback MJPEG) camera whose URL carries credentials, and the masking itself."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import pytest

from roadside.edge.settings import VideoSource
from roadside.edge.sources.base import Frame
from roadside.edge.sources.uri import mask_credentials
from roadside.edge.sources.video import VideoFrameSource
from roadside.shared.backoff import Backoff
from roadside.shared.errors import TransportError
from tests.component.test_video_source import MjpegCamera, wait_until

pytestmark = pytest.mark.timeout(60)

SECRET = "s3cr3t-x"  # FFmpeg must accept it; odder passwords are in test_masking


@pytest.fixture
def camera() -> Iterator[MjpegCamera]:
    cam = MjpegCamera()
    cam.start()
    yield cam
    cam.stop()


def test_reconnects_of_a_camera_with_a_password_never_log_it(
    camera: MjpegCamera, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    uri = f"http://admin:{SECRET}@127.0.0.1:{camera.port}/video.mjpg"
    source = VideoFrameSource(VideoSource(name="gate", uri=uri, fps_cap=50.0), Backoff(0.1, 0.3))
    got: list[Frame] = []
    reader = threading.Thread(target=lambda: got.extend(source.frames()), name="reader", daemon=True)
    reader.start()
    try:
        assert wait_until(lambda: len(got) >= 5, 15), "no frames from the camera"
        camera.stop()
        time.sleep(1.0)  # down for a while: reopen attempts fail and are logged
        camera.start()
        assert wait_until(lambda: source.reconnects >= 1, 20)
    finally:
        source.close()
        reader.join(10)
    lines = [r.getMessage() for r in caplog.records]
    assert any("retrying" in line for line in lines), lines  # the failed reopens were logged...
    assert not [line for line in lines if "s3cr" in line]  # ...without the password
    assert any("admin:***@127.0.0.1" in line for line in lines if "retrying" in line)


def test_a_camera_that_never_opens_fails_without_its_password() -> None:
    source = VideoFrameSource(VideoSource(name="gate", uri=f"rtsp://admin:{SECRET}@127.0.0.1:9/x"))
    with pytest.raises(TransportError) as failure:
        next(iter(source.frames()))
    assert "s3cr" not in str(failure.value)
    assert "rtsp://admin:***@127.0.0.1:9/x" in str(failure.value)


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("rtsp://user:secret@10.0.0.2:554/s1", "rtsp://user:***@10.0.0.2:554/s1"),
        ("rtsp://user:p@ss/word@cam/s1", "rtsp://user:***@cam/s1"),  # unencoded @ and / in it
        ("rtsp://:secret@cam/s1", "rtsp://:***@cam/s1"),
        ("at 'rtsp://u:secret@cam/s1' failed", "at 'rtsp://u:***@cam/s1' failed"),
        ("http://cam/snap.jpg?user=admin&pwd=secret&ch=1", "http://cam/snap.jpg?user=admin&pwd=***&ch=1"),
        ("rtsp://user@cam/s1 and rtsp://cam/s1", "rtsp://user@cam/s1 and rtsp://cam/s1"),  # nothing secret
        ("a://u:x@h and b://v:y@k", "a://u:***@h and b://v:***@k"),
    ],
)
def test_masking(text: str, masked: str) -> None:
    assert mask_credentials(text) == masked
