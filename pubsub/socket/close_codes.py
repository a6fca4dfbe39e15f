"""The close codes a socket is closed with, and why they are 4000 and up."""

from pubsub.socket.backpressure import CLOSE_POLICY_VIOLATION

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_UNSUPPORTED_DATA",
    "CLOSE_INVALID_PAYLOAD",
    "CLOSE_TOO_SLOW",
    "CLOSE_TOO_BIG",
    "RFC_MESSAGE_TOO_BIG",
]

# Close codes. daphne (autobahn) lets an application send only 1000 or 3000-4999, so
# DPS uses 4000 + the RFC 6455 code it means. phoenix.js reconnects after any of
# them; 1000 would stop clients up to phoenix v1.8.12 from reconnecting.
CLOSE_GOING_AWAY = 4001
CLOSE_UNSUPPORTED_DATA = 4003
CLOSE_INVALID_PAYLOAD = 4007
CLOSE_TOO_SLOW = CLOSE_POLICY_VIOLATION  # 4008: the client stopped reading (pubsub/socket/backpressure.py)
CLOSE_TOO_BIG = 4009
RFC_MESSAGE_TOO_BIG = 1009  # daphne's own limit (--websocket_max_message_size, 1 MiB by default)
