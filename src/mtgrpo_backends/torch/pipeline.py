"""The pipelined loop (streaming mode, `sampler.steps_ahead` >= 1): generation for later steps overlaps the update.

After a step's batch is finished, the controller asks for the groups of the batch steps_ahead steps later
(`BatchBuilder.ahead`). The loop draws their prompts and hands them to the `GenerationWorker`, which samples and
scores them on its own thread with its own copy of the policy, refreshed from the trainer's weights before the
update starts, and computes their generating log-probabilities with that copy. The update runs meanwhile (torch ops
release the GIL). The loop collects the groups before the step ends and reports them to the controller at once
(`Controller.report_ahead`), which holds them, as payloads, until the step they are due: there a selected group is
trained with the clipped ratio against its stored log-probabilities, as a carried group is. Between steps nothing
runs, so a checkpoint holds the controller's groups and the worker's generator, and a resumed run continues bit for
bit.
"""

from __future__ import annotations

import copy
import time
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from mtgrpo_backends.torch.rollout import GeneratedGroup, generate_groups, store_logprobs
from mtgrpo_backends.torch.tasks import CharTokenizer, Problem, Suite

Ahead = tuple[list[GeneratedGroup], int, float]  # the groups, their failed rewards, the worker's seconds


class GenerationWorker:
    """Generates ahead requests on one thread with its own copy of the policy and its own torch generator (seeded
    from the run's seed; a checkpoint saves its state)."""

    def __init__(
        self,
        model: torch.nn.Module,
        suite: Suite,
        tokenizer: CharTokenizer,
        *,
        seed: int,
        group_size: int,
        temperature: float,
        errors_as_zero: bool,
        device: str,
    ) -> None:
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        seed_bits = int(np.random.SeedSequence([seed, 3]).generate_state(1, np.uint64)[0])
        self.generator = torch.Generator(device=device).manual_seed(seed_bits)
        self._suite, self._tokenizer, self._device = suite, tokenizer, device
        self._n, self._temperature, self._errors_as_zero = group_size, temperature, errors_as_zero
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mtgrpo-generate")

    def start(self, policy: torch.nn.Module, problems: list[tuple[int, Problem]]) -> Future[Ahead]:
        """Refresh the copy from `policy` (before the trainer updates it) and generate `problems` on the thread."""
        self.model.load_state_dict(policy.state_dict())
        return self._thread.submit(self._generate, problems)

    def _generate(self, problems: list[tuple[int, Problem]]) -> Ahead:
        t0 = time.perf_counter()
        groups, failed = generate_groups(
            self.model,
            self._suite,
            self._tokenizer,
            problems,
            self._n,
            self._temperature,
            self.generator,
            self._errors_as_zero,
        )
        store_logprobs(self.model, groups, self._tokenizer.pad_id, self._temperature, self._device)
        return groups, failed, time.perf_counter() - t0
