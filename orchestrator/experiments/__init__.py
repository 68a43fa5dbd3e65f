"""Reproducible experiments (`rlhf experiment NAME [options]`), one module each; `common` holds what they
share (findings judged over seeds, and the skeleton of an experiment over seeds).

Each module has `main(argv, prog)`: it parses its own options (`rlhf experiment NAME --help`) and runs.
`EXPERIMENTS` below names them for the CLI without importing them (`rlhf --help` stays light).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

__all__ = ["EXPERIMENTS", "Experiment"]


@dataclass(frozen=True)
class Experiment:
    help: str
    load: Callable
    """Imports the experiment's module (which has `main(argv, prog)`)."""


def _dpl_synthetic():
    from orchestrator.experiments import dpl_synthetic

    return dpl_synthetic


def _hidden_context():
    from orchestrator.experiments import hidden_context

    return hidden_context


def _relevance_hacking():
    from orchestrator.experiments import relevance_hacking

    return relevance_hacking


def _length_bias():
    from orchestrator.experiments import length_bias

    return length_bias


def _scaling():
    from orchestrator.experiments import scaling

    return scaling


def _estimators():
    from orchestrator.experiments import estimators

    return estimators


def _environments():
    from orchestrator.experiments import environments

    return environments


def _data_audit():
    from orchestrator.experiments import data_audit

    return data_audit


EXPERIMENTS = {
    "dpl-synthetic": Experiment("the DPL paper's 1-D hidden-context experiment", _dpl_synthetic),
    "hidden-context": Experiment("DPL std, ODIN and risk-averse PPO on the built-in preference data", _hidden_context),
    "relevance-hacking": Experiment("PPO with bare relevance, relevance x length, and R^3", _relevance_hacking),
    "length-bias": Experiment("PPO with Bradley-Terry, ODIN's quality head, a length penalty, reward clipping", _length_bias),
    "scaling": Experiment("a sweep of real runs over a grid of config values: step and phase times, memory, comm", _scaling),
    "estimators": Experiment("PPO with GAE against GRPO, Dr. GRPO, RLOO, REINFORCE++ on the built-in task", _estimators),
    "environments": Experiment("PPO and GRPO on the built-in multi-turn environments (a tool call, a clarifying question)",
                               _environments),
    "data-audit": Experiment("rlhf data audit scored against what the built-in preference data is known to hide", _data_audit),
}
