"""VM drivers. A driver runs one VM; it knows nothing of the host agent or CLI.

Required behaviour is the `Driver` protocol. Optional capabilities
(file-system hot-plug, snapshots, suspend/resume) are separate protocols,
discovered with isinstance(), so a driver that lacks one needs no stub.
Drivers are made by roost.driver.factory from a VMDescription.
"""

from roost.driver.base import (
    Driver,
    DriverError,
    DriverInfo,
    FileSystemHotplug,
    Share,
    SSHAddress,
    Suspendable,
    SuspendableDriver,
    VMDescription,
    VMSnapshots,
)

__all__ = ["Driver", "DriverError", "DriverInfo", "FileSystemHotplug", "SSHAddress", "Share",
           "Suspendable", "SuspendableDriver", "VMDescription", "VMSnapshots"]
