"""The swarm's own members as faults, with real agent processes, sockets and kill -9 (benchmarks/bench_liveness.py):
a restart in fast rounds, a board whose every neighbour died, a board brought up late. The default suite runs each
once, shortened; ``-m slow`` runs the issue's full sizes (the restart ten times, the late board 90 s late)."""
import pytest

from benchmarks import bench_liveness as bl


def _check_restart(table: dict) -> None:
    for row in table["runs"]:
        assert row["exits"] == [0, 0, 0, 0], row
        assert row["adopted"] == [] and row["suspected"] == {}, row  # no healthy board took another's parameters
        assert row["worst_pct"] < 2.0, row
        assert row["resumed_at"] is not None and row["resumed_at"] >= table["kill_after"] - 10, row


def _check_isolated(table: dict, paced: bool = False) -> None:
    d = table["deadline_s"]
    for q, leaf in table["leaves"].items():
        assert leaf["exit"] == 0 and leaf["rounds"] == table["rounds"], leaf
        assert leaf["rounds_alone"] >= table["rounds"] - table["died_after"] - 2, leaf
        assert "rounds alone" in leaf["summary"][0], leaf
        if paced:  # wall clock: the slow tier only (the default suite asserts the pace with a fake clock)
            assert 1.0 * d <= leaf["min_round_s"] and leaf["max_round_s"] <= 2.0 * d, leaf


def _check_late(table: dict) -> None:
    for q, board in enumerate(table["boards"]):
        assert board["exit"] == "exit status 0", board
        assert board["suspected"] == [] and board["rounds_alone"] == 0, board
        assert board["rounds"] == list(range(table["rounds"] + 1)), board  # every round, together
        assert board["max_abs_diff"] < 1e-8, board


def test_a_fast_round_restart_leaves_the_healthy_boards_alone(capsys):
    with capsys.disabled():
        # the size (300 unpaced rounds take seconds): shorter, a resume from the checkpoint before the
        # kill (its log at round 40, its last checkpoint at 30) leaves too few rounds to settle within 2%
        _check_restart(bl.run_restart(runs=1, say=lambda s: print("\n  " + s)))


def test_a_board_whose_every_neighbour_died_trains_on_one_round_per_deadline(capsys):
    with capsys.disabled():
        _check_isolated(bl.run_isolated(rounds=40, kill_at=10, deadline=0.5, handshake_timeout=2.0,
                                        say=lambda s: print("\n  " + s)))


def test_a_board_started_late_delays_the_swarm_and_nobody_exits(capsys):
    with capsys.disabled():
        _check_late(bl.run_late(delay=12.0, handshake_timeout=3.0, rounds=15, say=lambda s: print("\n  " + s)))


@pytest.mark.slow
def test_ten_fast_round_restarts_at_full_size(capsys):
    with capsys.disabled():
        _check_restart(bl.run_restart(runs=10, say=lambda s: print("\n  " + s)))


@pytest.mark.slow
def test_the_middle_of_a_path_killed_at_round_20_of_200(capsys):
    with capsys.disabled():
        _check_isolated(bl.run_isolated(say=lambda s: print("\n  " + s)), paced=True)


@pytest.mark.slow
def test_a_board_started_90_s_late(capsys):
    with capsys.disabled():
        _check_late(bl.run_late(say=lambda s: print("\n  " + s)))
