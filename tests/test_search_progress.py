"""The Optuna search's progress view (harness/sweep/search_progress.py) on a real in-memory study."""
from __future__ import annotations

import optuna
import pytest

from harness.sweep.search_progress import SearchProgress


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_event_lines_follow_the_trials_states_and_the_estimate_uses_the_pace():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    st = optuna.create_study(direction="minimize", sampler=optuna.samplers.RandomSampler(seed=0))
    lines, clock = [], Clock()
    with SearchProgress(st, 4, live=False, echo=lines.append, clock=clock) as view:
        a = st.ask()
        a.suggest_float("x", 0, 1)
        clock.now = 10.0
        view.poll()
        assert lines[-1].startswith("trial #0 started: x=")
        st.tell(a, 3.0)
        clock.now = 20.0
        view.poll()
        assert lines[-1].startswith("trial #0 complete: 3 (best #0: 3); 1/4 trials ended (1 complete)")
        assert view.eta() == pytest.approx(20.0 / 1 * 3)           # 20 s per trial so far, 3 left
        b = st.ask()
        b.suggest_float("x", 0, 1)
        st.tell(b, 1.0)                                            # starts and ends between two polls
        c = st.ask()
        c.set_user_attr("gflops", 9.5)
        st.tell(c, state=optuna.trial.TrialState.PRUNED)
        d = st.ask()
        d.set_user_attr("error", "ConfigError: method.boundaries: out of order")
        st.tell(d, state=optuna.trial.TrialState.FAIL)
        clock.now = 40.0
        view.poll()
    said = lines[2:]
    assert said[0].startswith("trial #1 started: x=") and said[1].startswith("trial #1 complete: 1 (best #1: 1)")
    assert said[2] == "trial #2 started: (parameters not drawn yet)" and said[3] == "trial #2 pruned: gflops=9.5"
    assert said[5] == "trial #3 failed: ConfigError: method.boundaries: out of order"
    assert view.counts() == {"complete": 2, "pruned": 1, "fail": 1} and view.eta() == 0


def test_the_live_view_renders_the_best_trial_and_the_last_ones():
    from rich.console import Console

    st = optuna.create_study(direction="maximize")
    for v in (0.2, 0.9, 0.5):
        t = st.ask()
        t.suggest_int("k", 1, 8)
        st.tell(t, v)
    console = Console(record=True, width=100, force_terminal=False)
    view = SearchProgress(st, 5, direction="maximize", live=False, echo=lambda *_: None, console=console)
    view.poll(force=True)
    console.print(view.render())
    text = console.export_text()
    assert "3/5 trials ended (3 complete)" in text and "best #1: 0.9" in text
    assert text.count("complete") >= 4                             # the header and one row per trial
