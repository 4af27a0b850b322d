from __future__ import annotations

import pytest

from roost.hostagent.cleanup import CleanupError, CleanupStack


async def test_runs_newest_first_and_every_one_despite_errors() -> None:
    order: list[str] = []
    stack = CleanupStack()

    def sync(name: str, fail: bool = False) -> None:
        order.append(name)
        if fail:
            raise RuntimeError(f"{name} broke")

    async def coro(name: str) -> None:
        order.append(name)
        raise OSError("disk gone")

    stack.push("stop qemu", lambda: sync("qemu"))
    stack.push("remove socket", lambda: coro("socket"))
    stack.push("close api", lambda: sync("api", fail=True))
    stack.push("forwarder", lambda: sync("fwd"))
    with pytest.raises(CleanupError) as e:
        await stack.run()
    assert order == ["fwd", "api", "socket", "qemu"]
    assert e.value.errors == ["close api: api broke", "remove socket: disk gone"]
    assert len(stack) == 0


async def test_clean_run_raises_nothing_and_runs_once() -> None:
    calls = []
    stack = CleanupStack()
    stack.push("a", lambda: calls.append("a"))
    await stack.run()
    await stack.run()
    assert calls == ["a"]
