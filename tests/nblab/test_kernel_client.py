"""nblab.notebooks' kernel client: a message whose wake-up was missed is still read."""

import asyncio
from queue import Empty

import pytest

from nblab import notebooks
from nblab.notebooks import KernelManager, SlicedPollChannel, SlicedPollKernelClient


class FlakySocket:
    """A zmq socket stand-in whose first `misses` polls sleep out their whole timeout
    and report nothing, although a message is there (pyzmq's missed edge)."""

    def __init__(self, misses: int):
        self.misses, self.polls = misses, []

    async def poll(self, timeout_ms):
        self.polls.append(timeout_ms)
        if len(self.polls) <= self.misses:
            await asyncio.sleep((timeout_ms or 0) / 1000)
            return 0
        return 1


def _channel(socket) -> SlicedPollChannel:
    channel = SlicedPollChannel.__new__(SlicedPollChannel)
    channel.socket = socket

    async def recv(**_):
        return {"msg_type": "execute_reply"}

    channel._recv = recv
    return channel


@pytest.fixture(autouse=True)
def short_slices(monkeypatch):
    monkeypatch.setattr(notebooks, "POLL_SLICE_S", 0.05)


def test_a_missed_wakeup_is_recovered_by_the_next_slice():
    socket = FlakySocket(misses=2)
    msg = asyncio.run(_channel(socket).get_msg(timeout=None))  # None: wait for ever
    assert msg == {"msg_type": "execute_reply"}
    assert socket.polls == [50, 50, 50]  # never one unbounded poll


def test_a_timeout_still_raises_empty_when_nothing_comes():
    socket = FlakySocket(misses=10**6)
    with pytest.raises(Empty):
        asyncio.run(_channel(socket).get_msg(timeout=0.12))
    assert len(socket.polls) >= 3  # 0.12 s in slices of 0.05 s
    assert all(p <= 50 for p in socket.polls)


def test_the_kernel_manager_hands_out_the_sliced_client():
    client = KernelManager().client()
    assert isinstance(client, SlicedPollKernelClient)
    assert client.shell_channel_class is SlicedPollChannel
    assert client.iopub_channel_class is SlicedPollChannel
