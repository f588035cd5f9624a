"""Measuring in a process of its own: the same numbers as measuring in place, for the same
seed every time; niced, in a process group of its own; started again after it ends
idle, is killed, or is cancelled; a file it cannot read is a `MeasureFailed`, not a
dead process."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from refresher.media import effects, measure
from refresher.media.effects import Strength
from refresher.media.ffmpeg import FFMPEG_NICE
from refresher.media.measurer import Measurer
from refresher.media.measuring import sample_halves
from refresher.media.probe import probe
from refresher.media.variations import Batch, Draws, Encoder, Layout, make_variations
from tests.support.clock import wait_for

SEED = 77
COUNT = 3


@pytest.fixture
async def measurer() -> AsyncIterator[Measurer]:
    made = Measurer()
    try:
        yield made
    finally:
        await made.aclose()


def _draws(source: Path, strength: Strength) -> Draws:
    probed = probe(source)
    return Draws(
        strength=strength, seed=SEED, position=0,
        frame=effects.Frame(probed.width, probed.height, probed.fps, probed.has_audio),
        subtle=effects.generate(SEED, COUNT),
    )  # fmt: skip


async def _make(ffmpeg: str, source: Path, folder: Path, measurer: Measurer) -> Batch:
    await trio.Path(folder).mkdir()
    layout = Layout(
        output=lambda index: folder / f"var{index}.mp4",
        still=lambda index: folder / f"var{index}.jpg",
        reference=folder / "reference.mkv",
        source_still=folder / "source.jpg",
    )
    return await make_variations(
        Encoder(ffmpeg, measurer=measurer), source, probe(source), range(1, COUNT + 1),
        _draws(source, Strength.STANDARD), layout,
    )  # fmt: skip


def _measures(batch: Batch) -> dict[int, dict[str, object] | None]:
    """Each variation's measures against its source and the batch's others."""
    hashes = {index: made.sample.hashes for index, made in batch.kept.items() if made.sample}
    found: dict[int, dict[str, object] | None] = {}
    for index, made in sorted(batch.kept.items()):
        measured = made.measured([h for other, h in hashes.items() if other != index])
        found[index] = measured.as_json() if measured else None
    return found


async def test_the_same_seed_measures_the_same_every_time_and_as_measuring_in_place(
    ffmpeg: str, footage: Path, tmp_path: Path, measurer: Measurer
) -> None:
    first = await _make(ffmpeg, footage, tmp_path / "first", measurer)
    second = await _make(ffmpeg, footage, tmp_path / "second", measurer)
    assert first.attempts == second.attempts
    assert _measures(first) == _measures(second)
    assert all(value is not None for value in _measures(first).values())

    # The measuring process gives, bit for bit, what the same sampling gives in place.
    probed = probe(footage)
    plan = measure.sampling(probed.duration_s, probed.width, probed.height)
    reference = tmp_path / "reference.mkv"
    command = [ffmpeg, *measure.reference_args(footage, plan, reference)]
    assert (await trio.run_process(command)).returncode == 0
    wanted = [measure.Wanted(made.output.path) for _, made in sorted(first.kept.items())]
    there_source, there = await measurer.sample(reference, plan, wanted, None)
    here_source, here = await trio.to_thread.run_sync(sample_halves, reference, plan, wanted, None)
    assert there_source.packed() == here_source.packed()
    assert [(one.packed(), one.ssim) for one in there] == [(one.packed(), one.ssim) for one in here]
    assert [one.packed() for one in there] == [
        made.sample.packed() for _, made in sorted(first.kept.items()) if made.sample
    ]
    assert measurer.started == 1


def _nice(pid: int) -> int:
    # The 19th field of /proc/PID/stat, the 17th after the command's name.
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


async def _sample_footage(
    ffmpeg: str, footage: Path, tmp_path: Path, measurer: Measurer
) -> tuple[measure.Sampled, list[measure.Sampled]]:
    probed = probe(footage)
    plan = measure.sampling(probed.duration_s, probed.width, probed.height)
    reference = tmp_path / "reference.mkv"
    if not reference.exists():
        command = [ffmpeg, *measure.reference_args(footage, plan, reference)]
        assert (await trio.run_process(command)).returncode == 0
    return await measurer.sample(
        reference, plan, [measure.Wanted(footage, keyframes_only=False)], None
    )


async def test_it_runs_niced_in_a_group_of_its_own_and_ends_when_closed(
    ffmpeg: str, footage: Path, tmp_path: Path, measurer: Measurer
) -> None:
    source, [itself] = await _sample_footage(ffmpeg, footage, tmp_path, measurer)
    assert measure.against(itself.hashes, source.hashes)[1] == 1.0  # it is its source
    pid = measurer.pid
    assert pid is not None
    assert _nice(pid) == FFMPEG_NICE
    assert os.getpgid(pid) == pid  # a group of its own: a terminal's Ctrl-C is ours
    assert os.getsid(pid) == os.getsid(0)  # our session: its nice value weighs
    await measurer.aclose()
    assert measurer.pid is None
    assert not await trio.Path(f"/proc/{pid}").exists()  # ended and reaped


async def test_it_starts_again_after_ending_idle_or_being_killed(
    ffmpeg: str, footage: Path, tmp_path: Path
) -> None:
    measurer = Measurer(idle_exit_s=0.5)
    try:
        expected = await _sample_footage(ffmpeg, footage, tmp_path, measurer)
        first = measurer.pid
        assert first is not None

        async def ended() -> bool:  # on its own, giving its memory back
            return measurer.pid is None

        await wait_for(ended, polls=100, step_s=0.1)
        again = await _sample_footage(ffmpeg, footage, tmp_path, measurer)
        assert again[0].packed() == expected[0].packed()
        assert measurer.started == 2
        # Killed from outside between requests (the out-of-memory killer, say).
        killed = measurer.pid
        assert killed is not None
        os.kill(killed, signal.SIGKILL)
        await _sample_footage(ffmpeg, footage, tmp_path, measurer)
        assert measurer.started == 3
        assert measurer.pid not in (None, killed)
    finally:
        await measurer.aclose()


async def test_a_cancelled_request_kills_the_process_and_the_next_starts_another(
    ffmpeg: str, footage: Path, tmp_path: Path, measurer: Measurer
) -> None:
    await _sample_footage(ffmpeg, footage, tmp_path, measurer)
    busy = measurer.pid
    assert busy is not None
    with trio.move_on_after(0.05) as scope:
        await _sample_footage(ffmpeg, footage, tmp_path, measurer)
    assert scope.cancelled_caught
    assert measurer.pid is None
    assert not await trio.Path(f"/proc/{busy}").exists()  # killed and reaped
    await _sample_footage(ffmpeg, footage, tmp_path, measurer)
    assert measurer.started == 2


async def test_a_file_it_cannot_read_fails_the_measuring_not_the_process(
    ffmpeg: str, footage: Path, tmp_path: Path, measurer: Measurer
) -> None:
    await _sample_footage(ffmpeg, footage, tmp_path, measurer)
    pid = measurer.pid
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\0" * 4096)
    plan = measure.Sampling(1.0, 2, 64, 64)
    with pytest.raises(measure.MeasureFailed, match="could not be read"):
        await measurer.sample(broken, plan, [measure.Wanted(broken)], None)
    assert measurer.pid == pid
    await _sample_footage(ffmpeg, footage, tmp_path, measurer)
    assert measurer.started == 1


async def test_a_measuring_process_that_cannot_start_fails_the_measuring_not_the_next(
    ffmpeg: str, footage: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    measurer = Measurer()
    monkeypatch.setattr("refresher.media.measurer.sys.executable", str(tmp_path / "no-python"))
    with pytest.raises(measure.MeasureFailed, match="the measuring process"):
        await _sample_footage(ffmpeg, footage, tmp_path, measurer)
    monkeypatch.undo()
    assert measurer.started == 2  # tried once more, then gave up
    try:  # and the next request starts one that works
        await _sample_footage(ffmpeg, footage, tmp_path, measurer)
        assert measurer.started == 3
        assert measurer.pid is not None
    finally:
        await measurer.aclose()
