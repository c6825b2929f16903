"""What ``predict`` reads and writes besides detections: its inputs (a file, a directory, a glob
or a video) and annotated videos.

Conventions pinned here (tests/test_predict.py checks them):
    * ``list_inputs(spec)``: a video file (suffix in ``VIDEO_SUFFIXES``) is a video; another
      file is one image; a directory gives its image files (suffix in ``IMAGE_SUFFIXES``, case
      ignored, not recursive); anything else is a glob (``**`` recursive). Images are sorted
      by path; each gets a ``file_name``: its path relative to the directory (directory
      input), to the glob's fixed leading directory (glob input), or its base name (file).
    * Videos are read and written with PyAV (FFmpeg; the ``video`` extra). Frames are decoded
      as (H, W, 3) uint8 RGB in stream order. ``VideoWriter`` encodes H.264 (libx264, else
      MPEG-4 part 2) in yuv420p at the input's frame rate, one output frame per frame given;
      a frame of odd height or width gets one black row / column at the bottom / right
      (yuv420p needs even sizes).

Shape shorthand: H, W frame or image size.
"""
import glob
import os
from fractions import Fraction

import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                  ".pgm")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv",
                  ".flv", ".ts")


def is_video(path):
    return os.path.splitext(path)[1].lower() in VIDEO_SUFFIXES


def _is_image(path):
    return os.path.splitext(path)[1].lower() in IMAGE_SUFFIXES


def list_inputs(spec):
    """(kind, [(path, file_name), ...]) of ``predict --input``: kind "video" (one entry),
    "file" (one image), "directory" or "glob" (its images, sorted by path).

    Raises FileNotFoundError when ``spec`` names no file or directory and matches no file, or
    when a directory or glob holds no image (the message lists the suffixes read).
    """
    if os.path.isfile(spec):
        return ("video" if is_video(spec) else "file"), [(spec, os.path.basename(spec))]
    if os.path.isdir(spec):
        paths = [os.path.join(spec, n) for n in os.listdir(spec)]
        kind, root = "directory", spec
    elif glob.has_magic(spec):
        paths, kind = glob.glob(spec, recursive=True), "glob"
        root = _fixed_prefix(spec)
    else:
        raise FileNotFoundError(f"--input {spec}: no such file or directory (nor a glob "
                                "matching files)")
    images = sorted(p for p in paths if os.path.isfile(p) and _is_image(p))
    if not images:
        raise FileNotFoundError(f"--input {spec}: no image files (suffixes: "
                                f"{' '.join(IMAGE_SUFFIXES)}; a video is given as one file)")
    return kind, [(p, os.path.relpath(p, root).replace(os.sep, "/")) for p in images]


def _fixed_prefix(pattern):
    """The leading directory of a glob pattern that has no wildcard ("." when none)."""
    parts, fixed = pattern.replace(os.sep, "/").split("/"), []
    for part in parts[:-1]:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return "/".join(fixed) or ("/" if pattern.startswith("/") else ".")


def _av():
    try:
        import av
    except ImportError:
        raise ImportError("video input needs PyAV: pip install 'av' (the keras-maskrcnn "
                          "'video' extra)") from None
    return av


def video_info(path):
    """{"frames": count in the header (0 when unknown), "rate": Fraction frames/s,
    "height", "width"} of the first video stream."""
    av = _av()
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or Fraction(25)
            return {"frames": int(stream.frames or 0), "rate": Fraction(rate),
                    "height": int(stream.codec_context.height),
                    "width": int(stream.codec_context.width)}
    except (av.FFmpegError, IndexError) as e:
        raise ValueError(f"{path}: cannot read a video stream ({e})") from None


def read_video_frames(path):
    """Yields the (H, W, 3) uint8 RGB frames of the first video stream, in order."""
    av = _av()
    try:
        with av.open(path) as container:
            for frame in container.decode(video=0):
                yield frame.to_ndarray(format="rgb24")
    except av.FFmpegError as e:
        raise ValueError(f"{path}: cannot decode the video ({e})") from None


class VideoWriter:
    """Encodes (H, W, 3) uint8 RGB frames into a video file; use as a context manager."""

    def __init__(self, path, rate):
        av = _av()
        self._av, self.path, self.rate = av, path, Fraction(rate).limit_denominator(100000)
        self.codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        self._container, self._stream, self.frames = av.open(path, "w"), None, 0

    def write(self, frame):
        frame = np.asarray(frame, np.uint8)
        h, w = frame.shape[:2]
        frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)))  # (even H, even W, 3)
        if self._stream is None:
            self._stream = self._container.add_stream(self.codec, rate=self.rate)
            self._stream.height, self._stream.width = frame.shape[:2]
            self._stream.pix_fmt = "yuv420p"
        video_frame = self._av.VideoFrame.from_ndarray(frame, format="rgb24")
        for packet in self._stream.encode(video_frame):
            self._container.mux(packet)
        self.frames += 1

    def close(self):
        if self._stream is not None:
            for packet in self._stream.encode():  # flush the encoder
                self._container.mux(packet)
        self._container.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
