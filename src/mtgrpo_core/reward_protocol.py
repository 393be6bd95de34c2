"""The paper's reward protocol, one set of names for every backend: 1.0 for a correct answer, 0.1 for a wrong
answer in the right format, 0.0 otherwise. Accuracy means reward == CORRECT."""

from __future__ import annotations

CORRECT = 1.0
FORMATTED = 0.1
UNFORMATTED = 0.0
