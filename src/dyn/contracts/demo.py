"""The hello-world and multi-node demo roles' messages."""

from __future__ import annotations

import msgspec

from dyn.contracts.base import EndpointRef, Text

__all__ = [
    "HELLO_GENERATE",
    "MULTINODE_GENERATE",
    "HelloRequest",
    "MultinodeReply",
    "MultinodeRequest",
]


class HelloRequest(msgspec.Struct, frozen=True):
    text: str


class MultinodeRequest(msgspec.Struct, frozen=True):
    prompt: str
    request_id: str | None = None  # None: the processor makes one up


class MultinodeReply(msgspec.Struct, frozen=True):
    request_id: str
    text: str


# Text items: the frontend's /generate route prints them as they are.
HELLO_GENERATE = EndpointRef("generate", HelloRequest, Text)
MULTINODE_GENERATE = EndpointRef("generate", MultinodeRequest, MultinodeReply)
