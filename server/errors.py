"""Protocol errors the coordinator reports to a peer as a gRPC status with a message."""

from __future__ import annotations

import grpc


class ProtocolError(Exception):
    """A request the coordinator refuses; the servicer turns it into ``code`` + ``message``."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def unauthenticated(message: str) -> ProtocolError:
    return ProtocolError(grpc.StatusCode.UNAUTHENTICATED, message)


def invalid(message: str) -> ProtocolError:
    return ProtocolError(grpc.StatusCode.INVALID_ARGUMENT, message)


def precondition(message: str) -> ProtocolError:
    return ProtocolError(grpc.StatusCode.FAILED_PRECONDITION, message)


def denied(message: str) -> ProtocolError:
    return ProtocolError(grpc.StatusCode.PERMISSION_DENIED, message)


def duplicate(message: str) -> ProtocolError:
    return ProtocolError(grpc.StatusCode.ALREADY_EXISTS, message)
