class PICAM2DNG:
    def __init__(self, *args, **kwargs):
        raise RuntimeError("pidng stand-in: DNG output is not available in tests")
