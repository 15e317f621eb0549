"""Hardware behind small interfaces: camera, controls, clock, key storage.

Nothing here knows about clips or the agent's state machine. Each interface has a
Raspberry Pi implementation and a simulated one (in ``hw_sim``) side by side; code
above this package cannot tell which one it was handed.
"""
