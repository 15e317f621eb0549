"""Stand-in for libcamera's Python bindings (test only; see ../README.md).

Only what picamera2 0.3.38 touches at import time, plus ``controls.SensorTimestamp`` and
``controls.FrameWallClock``, which bwv reads from request metadata."""
from enum import Enum

from . import controls, properties  # noqa: F401


class Transform:
    def __init__(self, hflip=0, vflip=0, transpose=0, rotation=0):
        self.hflip, self.vflip, self.transpose = bool(hflip), bool(vflip), bool(transpose)

    def __str__(self):
        return f"<libcamera.Transform hflip={int(self.hflip)} vflip={int(self.vflip)} transpose={int(self.transpose)}>"


class ColorSpace:
    def __init__(self, primaries=None, transferFunction=None, ycbcrEncoding=None, range=None):
        self.primaries, self.transferFunction = primaries, transferFunction
        self.ycbcrEncoding, self.range = ycbcrEncoding, range

    def __str__(self):
        return f"<libcamera.ColorSpace {self.primaries}>"

    @staticmethod
    def Sycc():
        return ColorSpace("Rec709", "Srgb", "Rec601", "Full")

    @staticmethod
    def Smpte170m():
        return ColorSpace("Smpte170m", "Rec709", "Rec601", "Limited")

    @staticmethod
    def Rec709():
        return ColorSpace("Rec709", "Rec709", "Rec709", "Limited")

    @staticmethod
    def Raw():
        return ColorSpace("Raw", "Linear", "None", "Full")


class Size:
    def __init__(self, width=0, height=0):
        self.width, self.height = width, height


class Rectangle:
    def __init__(self, x=0, y=0, width=0, height=0):
        self.x, self.y, self.width, self.height = x, y, width, height


class Orientation(Enum):
    Rotate0 = 1
    Rotate0Mirror = 2
    Rotate180 = 3
    Rotate180Mirror = 4
    Rotate90Mirror = 5
    Rotate270 = 6
    Rotate270Mirror = 7
    Rotate90 = 8


class ControlType(Enum):
    Null = 0
    Bool = 1
    Byte = 2
    Integer32 = 3
    Integer64 = 4
    Float = 5
    String = 6
    Rectangle = 7
    Size = 8
    Point = 9


class FrameBuffer:
    class Plane:
        pass

    def __init__(self, planes, cookie=0):
        self.planes = planes


class FrameBufferAllocator:
    def __init__(self, camera):
        raise RuntimeError("libcamera stand-in: no camera hardware in tests")


class CameraManager:
    @staticmethod
    def singleton():
        raise RuntimeError("libcamera stand-in: no camera hardware in tests")


class StreamRole(Enum):
    Raw = 0
    StillCapture = 1
    VideoRecording = 2
    Viewfinder = 3
