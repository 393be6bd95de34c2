"""`TrainState`: everything a run of the reference loop changes (a checkpoint holds all of it), and a fresh one."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mtgrpo_backends.torch.config import TrainConfig
from mtgrpo_backends.torch.model import check_vocab
from mtgrpo_backends.torch.pipeline import GenerationWorker
from mtgrpo_backends.torch.tasks import CharTokenizer, Suite
from mtgrpo_backends.torch.training_set import TrainingSet
from mtgrpo_core import Controller


@dataclass
class TrainState:
    """Everything a run changes: a checkpoint holds all of it."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    controller: Controller
    prompt_rng: np.random.Generator
    generator: torch.Generator
    ref_model: torch.nn.Module | None = None
    step: int = 0
    training_set: TrainingSet | None = None  # the finite training set (pool_size > 0) and its pool
    worker: GenerationWorker | None = None  # the pipelined loop's generation worker (sampler.steps_ahead >= 1)
    history: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)


def make_state(config: TrainConfig, model: torch.nn.Module, suite: Suite, tokenizer: CharTokenizer) -> TrainState:
    """Fresh state: controller for the method, Adam on the model, generators seeded by config.seed; a generation
    worker in streaming mode."""
    model.to(config.device).eval()  # dropout off during RL: rollouts, old and new log-probs use one policy
    check_vocab(model, tokenizer.vocab_size)
    controller = make_controller(config, suite)
    worker = None
    if controller.sampler.config.steps_ahead:
        worker = GenerationWorker(
            model,
            suite,
            tokenizer,
            seed=config.seed,
            group_size=config.group_size,
            temperature=config.temperature,
            errors_as_zero=config.reward_errors_as_zero,
            device=config.device,
        )
    return TrainState(
        model=model,
        optimizer=torch.optim.Adam(model.parameters(), lr=config.lr),
        controller=controller,
        prompt_rng=np.random.default_rng([config.seed, 2]),
        generator=torch.Generator(device=config.device).manual_seed(config.seed),
        ref_model=copy.deepcopy(model).eval().requires_grad_(False) if config.kl_coef > 0 else None,
        training_set=make_training_set(config, suite, controller),
        worker=worker,
    )


def make_controller(config: TrainConfig, suite: Suite) -> Controller:
    """The run's controller: its method with the config's sampler and rule settings."""
    return config.settings.controller(suite.num_tasks, config.batch_size, config.group_size, config.seed)


def make_training_set(config: TrainConfig, suite: Suite, controller: Controller) -> TrainingSet | None:
    """The finite training set of config.pool_size prompts per task (None for 0); selection classifies groups with
    the method's filter, so a method that does not filter is refused."""
    selection = config.settings.selection_config(controller.sampler.config.filtering)
    if config.pool_size == 0:
        return None
    return TrainingSet(suite, config.pool_size, config.seed, selection)
