"""Out-of-process core: ``ezvtb serve`` and `Client` (protocol and transports in docs/ipc.md).

`Client` mirrors `ezvtb.Core` (setImage / inference / stats / close); `Client.spawn` starts the
server itself. The runtime imports no torch; the server builds its core with `ezvtb.get_core`.
"""
from __future__ import annotations

from ezvtb.ipc.client import Client, FramesDropped, ServerGone
from ezvtb.ipc.echo import EchoCore
from ezvtb.ipc.protocol import PROTOCOL_VERSION, ProtocolError, ServerError, VersionMismatchError

__all__ = ["Client", "EchoCore", "FramesDropped", "PROTOCOL_VERSION", "ProtocolError", "ServerError",
           "ServerGone", "VersionMismatchError"]
