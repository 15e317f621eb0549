"""Stand-in for ``libcamera.controls``: ControlId objects used as metadata keys."""


class ControlId:
    def __init__(self, id_, name):
        self.id, self.name = id_, name

    def __repr__(self):
        return f"libcamera.ControlId({self.id}, {self.name})"


SensorTimestamp = ControlId(11, "SensorTimestamp")
FrameWallClock = ControlId(47, "FrameWallClock")
ExposureTime = ControlId(2, "ExposureTime")
ExposureTimeMode = ControlId(43, "ExposureTimeMode")
AnalogueGain = ControlId(3, "AnalogueGain")
AnalogueGainMode = ControlId(44, "AnalogueGainMode")
FrameDuration = ControlId(31, "FrameDuration")
