"""The live table: one owner of the config in use, a swap fanned out in a fixed order, and the
reloader that only validates and swaps. Real tables loaded from temp files; no server, no hooks."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar import attempts
from sidecar import config as config_mod
from sidecar.config import Config
from sidecar.live import STAGES, Live, Subscriber
from sidecar.reload import Reloader, announce
from sidecar.server import SidecarServer

from .memory_queue import MemoryScheduler
from .support import SCRIPTS, SECRET, table


def routes(name: str) -> str:
    return f"- event: push\n  name: {name}\n  run: {SCRIPTS}/record.sh\n"


def spec(cfg: Config, name: str) -> str:
    route = attempts.live_route(cfg, "/webhook", name)
    assert route is not None
    return attempts.route_spec(route)


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    """config.yaml with route `first`, and the env file holding its secret."""
    env_file = tmp_path / ".env"
    env_file.write_text(f"WEBHOOK_SECRET={SECRET}\n")
    (tmp_path / "config.yaml").write_text(table(routes("first")))
    return tmp_path / "config.yaml", env_file


def load(path: Path, env_file: Path, route: str) -> Config:
    path.write_text(table(routes(route)))
    return config_mod.load(path, env_file)


def test_a_swap_fans_out_in_the_fixed_order_and_readers_see_the_new_table(files: tuple[Path, Path]) -> None:
    path, env_file = files
    old, new = load(path, env_file, "first"), load(path, env_file, "second")
    live = Live(old)
    seen: list[tuple[str, str, str, str]] = []  # stage, old given, new given, the table readers saw then

    def recorder(stage: str) -> Subscriber:
        return lambda o, n: seen.append((stage, o.digest, n.digest, live.current.digest))

    for stage in reversed(STAGES):  # subscribed backwards: the order is the stages', not the subscribers'
        live.subscribe(stage, recorder(stage))
    known = attempts.routes_of([old])
    live.subscribe("routes", lambda _o, n: known.add(n))

    assert live.swap(new) is old
    assert [s[0] for s in seen] == ["routes", "sandbox", "limits", "warnings"]
    assert all(s[1:3] == (old.digest, new.digest) for s in seen)
    # Until the limits are ready, a reader still gets the old table; the warnings speak of the new one.
    assert [s[3] for s in seen] == [old.digest] * 3 + [new.digest]
    assert live.current is new
    assert spec(new, "second") in known and spec(old, "first") in known
    with pytest.raises(ValueError, match="stage must be one of"):
        live.subscribe("later", lambda _o, _n: None)


def test_the_reloader_validates_then_swaps_and_the_server_reads_the_live_table(files: tuple[Path, Path]) -> None:
    path, env_file = files
    live = Live(config_mod.load(path, env_file))
    started = live.current
    swaps: list[str] = []
    live.subscribe("routes", lambda _o, n: swaps.append(n.digest))
    live.subscribe("warnings", announce)
    server = SidecarServer(("127.0.0.1", 0), live, MemoryScheduler())
    try:
        reloader = Reloader(live, env_file, mode="off")
        assert reloader.check() == "unchanged" and swaps == []

        path.write_text("endpoints: [")  # invalid: the last good table stays, nobody is told
        assert reloader.check() == "rejected"
        assert live.current is started and server.config is started and swaps == []

        path.write_text(table(routes("second")))
        assert reloader.check() == "reloaded"
        assert swaps == [live.current.digest] and live.current is not started
        assert server.config is live.current  # the server holds no table of its own
        assert attempts.live_route(server.config, "/webhook", "second") is not None

        assert reloader.check(force=True) == "unchanged"  # the same table again: no second swap
        assert len(swaps) == 1
    finally:
        server.server_close()
