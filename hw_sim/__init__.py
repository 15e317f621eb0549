"""Simulated hardware: clock, camera, GPIO (gpiozero MockFactory) and scripted scenarios.

Production code never imports this package except through the driver interfaces in
``drivers/``: the agent is handed a Clock, a Camera and Controls and cannot tell that
they are simulated.
"""
