"""Exceptions raised by the shared-memory transport.
Owns the error vocabulary callers catch: a dead or departed peer, a closed ring, a timeout, no free channel."""
from __future__ import annotations


class IpcError(Exception):
    """Base class for every transport failure."""


class PeerDead(IpcError):
    """The process on the other end of a ring died or detached, so waiting longer is pointless."""


class RingClosed(PeerDead):
    """The ring was shut down on purpose (server shutdown); a subclass so one `except PeerDead` covers both."""


class RingTimeout(IpcError, TimeoutError):
    """`put` could not find room before its timeout: the consumer is alive but not draining."""


class NoFreeChannel(IpcError):
    """Every channel of a ChannelSet is claimed by a live frontend process."""
