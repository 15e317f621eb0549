"""Stand-in for simplejpeg (test only; JPEG saving is never exercised)."""


def encode_jpeg(*args, **kwargs):
    raise RuntimeError("simplejpeg stand-in")


def encode_jpeg_yuv_planes(*args, **kwargs):
    raise RuntimeError("simplejpeg stand-in")


def decode_jpeg(*args, **kwargs):
    raise RuntimeError("simplejpeg stand-in")
