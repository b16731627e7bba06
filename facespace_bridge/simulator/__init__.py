"""The FaceSpace API simulator: a deterministic world served over real HTTP.

`SimulatorServer` (background thread) and `AsyncSimulator` (current event loop) serve
`/facespace/logs`, `/facespace/recognition` and the admin API (docs/simulator.md);
`World` answers ground-truth questions in-process; `Faults` are the injectable faults.
"""

from facespace_bridge.simulator._faults import MALFORMED_SAMPLES, STOP_MESSAGE, Faults
from facespace_bridge.simulator._process import SimulatorProcess
from facespace_bridge.simulator._server import DEMO_API_KEY, AsyncSimulator, SimulatorServer
from facespace_bridge.simulator._world import StoredMalformed, World, WorldConfig

__all__ = [
    "DEMO_API_KEY",
    "MALFORMED_SAMPLES",
    "STOP_MESSAGE",
    "AsyncSimulator",
    "Faults",
    "SimulatorProcess",
    "SimulatorServer",
    "StoredMalformed",
    "World",
    "WorldConfig",
]
