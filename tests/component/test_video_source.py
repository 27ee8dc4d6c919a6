"""``VideoFrameSource`` against real files and a real HTTP camera on loopback.

The camera is an MJPEG-over-HTTP stream (``multipart/x-mixed-replace``, what
most IP cameras serve besides RTSP) from a ``ThreadingHTTPServer`` that the
test stops and restarts on the same port; OpenCV reads it through FFmpeg.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest

from roadside.edge.settings import VideoSource
from roadside.edge.sources.base import Frame
from roadside.edge.sources.video import VideoFrameSource, is_live
from roadside.shared.backoff import Backoff
from roadside.shared.errors import TransportError
from roadside.sim.synthetic import RoadScene, SceneConfig

pytestmark = pytest.mark.timeout(60)


def write_video(path: Path, frames: int, fps: float = 10.0, size: tuple[int, int] = (320, 240)) -> Path:
    """``frames`` of a synthetic road scene as MJPG in AVI (the codec opencv-python-headless always has)."""
    scene = RoadScene(SceneConfig(width=size[0], height=size[1], fps=fps, seed=5))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    assert writer.isOpened()
    for _ in range(frames):
        writer.write(scene.step().image)
    writer.release()
    return path


def read_all(source: VideoFrameSource) -> list[Frame]:
    return list(source.frames())


def test_live_and_file_uris_are_told_apart() -> None:
    assert is_live("0")
    assert is_live("rtsp://cam/stream")
    assert is_live("http://127.0.0.1:8080/x.mjpg")
    assert not is_live("/var/video/gate.avi")
    assert not is_live("file:///var/video/gate.avi")


def test_a_file_is_paced_at_its_own_rate_and_never_skips_a_frame(tmp_path: Path) -> None:
    path = write_video(tmp_path / "v.avi", 12, fps=20.0)
    started = time.monotonic()
    frames = read_all(VideoFrameSource(VideoSource(uri=str(path), fps_cap=10.0)))  # cap below the file's rate
    elapsed = time.monotonic() - started
    assert [f.index for f in frames] == list(range(12))
    assert 1.0 <= elapsed < 5.0  # 12 frames at the 10 fps cap: slowed down, not dropped
    steps = np.diff([f.ts for f in frames])
    assert steps == pytest.approx([1 / 20] * 11, abs=1e-4)  # media time: analytics see the file's own clock


def test_an_unpaced_file_runs_as_fast_as_it_decodes(tmp_path: Path) -> None:
    path = write_video(tmp_path / "v.avi", 40, fps=10.0)
    source = VideoFrameSource(VideoSource(uri=str(path), fps_cap=10.0))
    source.realtime = False  # what ``realtime = false`` in the config sets
    started = time.monotonic()
    assert [f.index for f in read_all(source)] == list(range(40))
    assert time.monotonic() - started < 3.0  # 4 s of video


def test_a_truncated_file_yields_its_readable_frames_and_ends(tmp_path: Path) -> None:
    data = write_video(tmp_path / "v.avi", 60).read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) // 2])
    frames = read_all(VideoFrameSource(VideoSource(uri=str(cut), fps_cap=120.0)))
    assert 25 <= len(frames) < 60
    assert [f.index for f in frames] == list(range(len(frames)))


def test_garbage_in_a_file_skips_the_broken_frames_and_goes_on(tmp_path: Path) -> None:
    data = bytearray(write_video(tmp_path / "v.avi", 60).read_bytes())
    rng = np.random.default_rng(7)
    for offset in np.linspace(len(data) * 0.1, len(data) * 0.8, 5).astype(int):
        data[offset : offset + 400] = rng.integers(0, 256, 400, dtype=np.uint8).tobytes()
    broken = tmp_path / "broken.avi"
    broken.write_bytes(bytes(data))
    frames = read_all(VideoFrameSource(VideoSource(uri=str(broken), fps_cap=120.0)))
    assert 40 <= len(frames) <= 60  # the frames around the garbage are gone, the rest are read
    assert [f.index for f in frames] == list(range(len(frames)))
    assert all(f.image.shape == (240, 320, 3) for f in frames)


def test_a_file_that_does_not_open_is_a_transport_error(tmp_path: Path) -> None:
    with pytest.raises(TransportError, match="cannot open video source 'cam0'"):
        read_all(VideoFrameSource(VideoSource(uri=str(tmp_path / "missing.avi"))))


# An HTTP camera -------------------------------------------------------------------------------


class MjpegCamera:
    """An endless MJPEG stream at ~25 fps on a fixed loopback port, stoppable and restartable."""

    def __init__(self) -> None:
        image = np.zeros((120, 160, 3), np.uint8)
        self.jpeg = cv2.imencode(".jpg", image)[1].tobytes()
        self.port = 0
        self._server: ThreadingHTTPServer | None = None
        self._stopping = threading.Event()

    def start(self) -> None:
        camera = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: object) -> None:
                pass

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                part = b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(camera.jpeg)
                try:
                    while not camera._stopping.wait(0.04):
                        self.wfile.write(part + camera.jpeg + b"\r\n")
                except OSError:
                    pass  # the reader went away

        self._stopping.clear()
        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, name="mjpeg-camera", daemon=True).start()
        self._server = server

    def stop(self) -> None:
        """Power-cycle: refuse connections and end the streams being served."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@pytest.fixture
def camera() -> Iterator[MjpegCamera]:
    cam = MjpegCamera()
    cam.start()
    yield cam
    cam.stop()


def wait_until(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_a_camera_that_goes_away_is_reconnected_with_increasing_frame_indices(camera: MjpegCamera) -> None:
    config = VideoSource(name="gate", uri=f"http://127.0.0.1:{camera.port}/video.mjpg", fps_cap=50.0)
    source = VideoFrameSource(config, backoff=Backoff(base_s=0.1, cap_s=0.5))
    got: list[Frame] = []
    errors: list[BaseException] = []

    def read() -> None:
        try:
            got.extend(source.frames())
        except Exception as exc:  # reported by the assertion below
            errors.append(exc)

    reader = threading.Thread(target=read, name="reader", daemon=True)
    reader.start()
    assert wait_until(lambda: len(got) >= 10, 15), "no frames from the camera"
    camera.stop()
    time.sleep(1.5)  # down for a while: reopen attempts are refused and backed off
    before = len(got)
    assert source.reconnects == 0
    camera.start()  # same port
    assert wait_until(lambda: source.reconnects >= 1 and len(got) >= before + 10, 20), (
        source.reconnects,
        len(got),
    )
    closed = time.monotonic()
    source.close()
    reader.join(10)
    assert not reader.is_alive()
    assert time.monotonic() - closed < 6.0  # at most one read timeout
    assert errors == []
    indices = [f.index for f in got]
    assert indices == list(range(len(indices)))  # no restart at 0 after the reconnect


def test_close_stops_a_source_that_is_backing_off(camera: MjpegCamera) -> None:
    config = VideoSource(uri=f"http://127.0.0.1:{camera.port}/video.mjpg", fps_cap=50.0)
    source = VideoFrameSource(config, backoff=Backoff(base_s=5.0, cap_s=5.0))
    frames = source.frames()
    next(frames)
    camera.stop()
    done = threading.Event()

    def drain() -> None:
        for _ in frames:
            pass
        done.set()

    threading.Thread(target=drain, name="drain", daemon=True).start()
    time.sleep(0.5)
    source.close()
    assert done.wait(6.0)
