"""Stand-in for pykms (kmsxx bindings; test only, DRM preview is never started)."""


class PixelFormat:
    # kmsxx's pixel formats are DRM fourcc codes.
    RGB888 = "RG24"
    BGR888 = "BG24"
    XRGB8888 = "XR24"
    XBGR8888 = "XB24"
    ABGR8888 = "AB24"
    YUYV = "YUYV"
    YVYU = "YVYU"
    YUV420 = "YU12"
    YVU420 = "YV12"
    NV12 = "NV12"


class PlaneType:
    Primary = 1
    Overlay = 2


class Card:
    def __init__(self, *args, **kwargs):
        raise RuntimeError("pykms stand-in: no DRM device in tests")
