"""Stand-in for python-prctl (test only; FfmpegOutput's child is never started)."""


def set_pdeathsig(sig):
    raise RuntimeError("prctl stand-in")


def set_name(name):
    pass
