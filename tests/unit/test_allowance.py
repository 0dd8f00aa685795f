"""What a request spent upstream, as its key is charged: reported usage, or an estimate where the
upstream could not say (a call cut off, a stream dropped before its usage chunk)."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from proxy.config.secrets import Redactor
from proxy.config.settings import UpstreamSettings
from proxy.pipeline.endpoints import CHAT
from proxy.pipeline.services import RequestServices
from proxy.upstream.allowance import BYTES_PER_TOKEN, RequestAllowance, estimate_tokens
from proxy.upstream.client import UpstreamClient
from strategies.contract import Usage
from tests.fake_transport import FakeTransport, chunks

MESSAGES = [{"role": "user", "content": "Say something long."}]


def services(handler: Any, allowance: RequestAllowance, **params: Any) -> RequestServices:
    upstream = UpstreamSettings(name="up", litellm_params={"model": "openai/m", "api_base": "http://up.test/v1"})
    client = UpstreamClient(upstream, Redactor([]), transport=FakeTransport(handler))
    return RequestServices(client, {"up": client}, params, CHAT, None, MESSAGES, allowance)  # type: ignore[arg-type]


def test_settling_charges_reported_usage_a_cut_call_its_estimate_and_a_failure_nothing() -> None:
    allowance = RequestAllowance()
    allowance.settle(allowance.reserve(100), Usage(10, 5))
    allowance.settle(allowance.reserve(100), Usage())  # an upstream that reports no usage
    allowance.settle(allowance.reserve(100), None, cut=True)
    allowance.settle(allowance.reserve(100), None)  # it failed: the upstream says it did nothing
    open_call = allowance.reserve(40)
    assert (allowance.spent, allowance.reserved, allowance.charged) == (215, open_call, 255)


def test_a_call_cancelled_while_the_upstream_works_is_charged_its_estimate() -> None:
    allowance = RequestAllowance()
    held = services(lambda call: asyncio.CancelledError(), allowance, max_tokens=50)
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(held.generate(MESSAGES, 2))
    assert allowance.charged == allowance.spent == 2 * (estimate_tokens(MESSAGES) + 50)


def test_a_stream_that_reports_usage_is_charged_it() -> None:
    allowance = RequestAllowance()
    usage_chunk = {"object": "chat.completion.chunk", "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}}

    async def stream() -> Any:
        async for chunk in chunks(["one", " two"]):
            yield chunk
        yield usage_chunk

    async def read() -> None:
        async for _ in services(lambda call: stream(), allowance).forward_stream(1):
            pass

    asyncio.run(read())
    assert (allowance.spent, allowance.reserved) == (10, 0)


def test_a_stream_dropped_before_its_usage_chunk_is_charged_its_prompt_and_text_so_far() -> None:
    allowance = RequestAllowance()
    pieces = ["Bonjour", " à", " tous", " les", " amis"]

    async def read_three_and_hang_up() -> None:
        stream = services(lambda call: chunks(pieces), allowance, max_tokens=500).forward_stream(1)
        for _ in range(3):
            await anext(stream)
        await stream.aclose()  # what a cancelled relay does to it

    asyncio.run(read_three_and_hang_up())
    streamed = len("".join(pieces[:3]).encode())
    assert allowance.reserved == 0
    assert allowance.spent == estimate_tokens(MESSAGES) + math.ceil(streamed / BYTES_PER_TOKEN)
