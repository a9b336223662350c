"""Every RPC decodes its request the same way: bytes that do not parse get INVALID_ARGUMENT naming
the field, and one log line — never grpc's `UNKNOWN: Unexpected DecodeError` with a traceback.

grpc runs a handler's `request_deserializer` outside the handler, so an exception there becomes
UNKNOWN and a logged traceback per message. `strict_decoding` wraps the server's generic handlers:
each method handler that has a deserializer is replaced (once per method, cached) by one that takes
raw bytes and decodes them itself with `decider.api.wire.decode_message`. A method added to the
proto later is covered without touching this file. Handlers that already take raw bytes (`Decide`,
`DecideStream`, which name the field themselves) are passed through unchanged.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import grpc
from google.protobuf import message as _message
from google.protobuf import message_factory as _factory

from decider.api.wire import decode_message
from decider.errors import InvalidRequest
from decider.v1 import decider_pb2 as pb

__all__ = ["strict_decoding"]

log = logging.getLogger("decider.server")


class _StrictDecoding(grpc.GenericRpcHandler):
    def __init__(self, inner: Iterable[grpc.GenericRpcHandler]) -> None:
        self.inner = tuple(inner)
        self.cache: dict[str, grpc.RpcMethodHandler | None] = {}

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = details.method
        try:
            return self.cache[method]
        except KeyError:
            pass
        handler = None
        for h in self.inner:
            handler = h.service(details)
            if handler is not None:
                handler = _strict(method, handler)
                break
        if handler is not None:   # unknown names are not cached: a caller could grow the cache
            self.cache[method] = handler
        return handler


def strict_decoding(handlers: Iterable[grpc.GenericRpcHandler]) -> grpc.GenericRpcHandler:
    """One generic handler over `handlers` whose methods all decode their requests strictly."""
    return _StrictDecoding(handlers)


def _request_class(method: str, deserializer: Callable[[bytes], Any]) -> type[_message.Message] | None:
    """The request message class of `/package.Service/Method`, from the API's descriptor pool (or,
    for a service outside it, from the deserializer's own class)."""
    try:
        _, service, name = method.split("/")
        desc = pb.DESCRIPTOR.pool.FindServiceByName(service).FindMethodByName(name).input_type
        return _factory.GetMessageClass(desc)
    except (ValueError, KeyError, AttributeError):
        owner = getattr(deserializer, "__self__", None)
        return owner if isinstance(owner, type) and issubclass(owner, _message.Message) else None


def _strict(method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    deserializer = handler.request_deserializer
    if deserializer is None:
        return handler
    cls = _request_class(method, deserializer)
    if cls is None:
        return handler

    async def decode(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        try:
            return decode_message(cls, raw)
        except InvalidRequest as e:
            log.warning("malformed request", extra={"method": method, "field": e.field, "peer": context.peer()})
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))

    if handler.unary_unary:
        inner_uu = handler.unary_unary

        async def unary_unary(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            result = inner_uu(await decode(raw, context), context)
            return await result if inspect.isawaitable(result) else result

        return grpc.unary_unary_rpc_method_handler(unary_unary, request_deserializer=None,
                                                   response_serializer=handler.response_serializer)
    if handler.unary_stream:
        inner_us = handler.unary_stream

        async def unary_stream(raw: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async for item in _results(inner_us(await decode(raw, context), context)):
                yield item

        return grpc.unary_stream_rpc_method_handler(unary_stream, request_deserializer=None,
                                                    response_serializer=handler.response_serializer)

    async def requests(raws: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async for raw in raws:
            yield await decode(raw, context)

    if handler.stream_unary:
        inner_su = handler.stream_unary

        async def stream_unary(raws: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> Any:
            result = inner_su(requests(raws, context), context)
            return await result if inspect.isawaitable(result) else result

        return grpc.stream_unary_rpc_method_handler(stream_unary, request_deserializer=None,
                                                    response_serializer=handler.response_serializer)
    inner_ss = handler.stream_stream

    async def stream_stream(raws: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async for item in _results(inner_ss(requests(raws, context), context)):
            yield item

    return grpc.stream_stream_rpc_method_handler(stream_stream, request_deserializer=None,
                                                 response_serializer=handler.response_serializer)


async def _results(result: Any) -> AsyncIterator[Any]:
    """A streaming handler's replies, whatever its style: async generator, sync iterator, or a
    coroutine that writes with `context.write` and returns None."""
    if hasattr(result, "__aiter__"):
        async for item in result:
            yield item
    elif inspect.isawaitable(result):
        result = await result
        if result is not None:
            for item in result:
                yield item
    elif result is not None:
        for item in result:
            yield item
