"""Progress where the output is not a terminal (a log file, a pipe, CI): plain lines, so that no stage
is silent for minutes; timed by a fake clock, never by the machine."""

from imgtune.progress import Reporter


def test_a_long_stage_says_it_started_how_far_it_got_every_heartbeat_and_when_it_ended(capsys):
    ticks = iter([0.0, 1.0, 31.0, 32.0, 70.0, 71.0, 72.0, 73.0])  # start, 6 batches, end
    with Reporter()._lines("Trunk view 1", 6, clock=lambda: next(ticks)) as advance:
        for _ in range(6):
            advance(1)
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["Trunk view 1: 6 to do ...", "Trunk view 1: 2 of 6 after 31 s", "Trunk view 1: 4 of 6 after 70 s",
                     "Trunk view 1: 6 of 6 done in 73 s."]


def test_a_short_stage_says_only_that_it_started_and_quiet_says_nothing(capsys):
    ticks = iter([0.0, 0.5, 1.0, 1.5])
    with Reporter()._lines("Hashing", 2, clock=lambda: next(ticks)) as advance:
        advance(1)
        advance(1)
    assert capsys.readouterr().err.splitlines() == ["Hashing: 2 to do ..."]
    with Reporter(quiet=True).bar("Hashing", 2) as advance:
        advance(2)
    assert capsys.readouterr().err == ""
