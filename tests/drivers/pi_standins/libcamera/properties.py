"""Stand-in for ``libcamera.properties`` (names only)."""


class ControlId:
    def __init__(self, id_, name):
        self.id, self.name = id_, name


Model = ControlId(2, "Model")
