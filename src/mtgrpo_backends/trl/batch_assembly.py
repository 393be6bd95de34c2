"""Building GRPOTrainer's training batch from rows of several generation chunks, on one or many processes.

A chunk is one call of GRPOTrainer's generate-and-score on a slice of rows per process; its output holds
row-aligned tensors (ids, masks, log-probabilities, advantages). The selected rows are taken from the chunks,
re-padded to common widths (prompts on the left, completions on the right, as GRPOTrainer pads them) and, with
several processes, gathered so that every process holds the whole batch in the same order and keeps its slice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import gather, pad_across_processes

# row-aligned keys of GRPOTrainer's output: (side padded, padding value; None = the tokenizer's pad id)
ROW_KEYS: dict[str, tuple[str, float | None]] = {
    "prompt_ids": ("left", None),
    "prompt_mask": ("left", 0),
    "completion_ids": ("right", None),
    "completion_mask": ("right", 0),
    "old_per_token_logps": ("right", 0.0),
    "ref_per_token_logps": ("right", 0.0),
    "sampling_per_token_logps": ("right", 0.0),
    "importance_sampling_ratio": ("right", 0.0),
    "tool_mask": ("right", 1),
    "advantages": ("right", 0.0),
}
RECOMPUTED_KEYS: frozenset[str] = frozenset({"num_items_in_batch"})


def check_keys(output: dict[str, Any]) -> list[str]:
    """Row-aligned keys of a chunk output; refuses keys this module cannot re-batch (multimodal inputs)."""
    unknown = sorted(k for k in output if k not in ROW_KEYS and k not in RECOMPUTED_KEYS)
    if unknown:
        raise NotImplementedError(
            f"dynamic sampling cannot re-batch GRPOTrainer outputs {unknown} (multimodal inputs are not supported); "
            "use a method without filtering such as 'grpo' or 'sec-grpo'"
        )
    return [k for k in ROW_KEYS if k in output]


def _pad_width(t: torch.Tensor, width: int, side: str, value: float) -> torch.Tensor:
    extra = width - t.shape[1]
    if extra == 0:
        return t
    return F.pad(t, (extra, 0) if side == "left" else (0, extra), value=value)


def take_rows(
    outputs: Sequence[dict[str, Any]],
    picks: Sequence[tuple[int, int]],
    pad_token_id: int,
    pad_to_multiple_of: int | None = None,
) -> dict[str, torch.Tensor]:
    """Rows picks[i] = (chunk, local row) of the chunk outputs, in that order, re-padded to common widths."""
    keys = check_keys(outputs[0])
    offsets = [0]
    for out in outputs:
        offsets.append(offsets[-1] + int(out["completion_ids"].shape[0]))
    index = torch.tensor([offsets[c] + r for c, r in picks], dtype=torch.long)

    def width_of(key: str) -> int:
        width = max(int(out[key].shape[1]) for out in outputs)
        return -(-width // pad_to_multiple_of) * pad_to_multiple_of if pad_to_multiple_of else width

    widths = {"left": width_of("prompt_ids"), "right": width_of("completion_ids")}
    taken: dict[str, torch.Tensor] = {}
    for key in keys:
        side, value = ROW_KEYS[key]
        fill = float(pad_token_id if value is None else value)
        parts = [out[key] for out in outputs]
        reference = "prompt_ids" if side == "left" else "completion_ids"
        if parts[0].dim() > 1 and all(p.shape[1] == o[reference].shape[1] for p, o in zip(parts, outputs, strict=True)):
            parts = [_pad_width(p, widths[side], side, fill) for p in parts]
        elif parts[0].dim() > 1 and len({int(p.shape[1]) for p in parts}) > 1:
            raise ValueError(f"output {key!r} has widths {[p.shape[1] for p in parts]} across chunks")
        taken[key] = torch.cat(parts)[index.to(parts[0].device)]
    return taken


def gather_rows(
    local: dict[str, torch.Tensor], counts: Sequence[int], accelerator: Accelerator, pad_token_id: int
) -> dict[str, torch.Tensor]:
    """Concatenate every process's rows in rank order (counts[q] rows from process q) on every process."""
    longest = max(counts)
    full: dict[str, torch.Tensor] = {}
    for key, t in local.items():
        side, value = ROW_KEYS[key]
        fill = pad_token_id if value is None else value
        if t.dim() > 1:
            t = pad_across_processes(t.contiguous(), dim=1, pad_index=fill, pad_first=side == "left")
        if t.shape[0] < longest:
            t = torch.cat([t, t.new_full((longest - t.shape[0], *t.shape[1:]), fill)])
        everything = gather(t.contiguous())
        full[key] = torch.cat([everything[q * longest : q * longest + n] for q, n in enumerate(counts)])
    return full


def collect_rows(
    outputs: Sequence[dict[str, Any]],
    local_rows: Sequence[int],
    final: Sequence[tuple[int, int]],
    pad_token_id: int,
    pad_to_multiple_of: int | None,
    accelerator: Accelerator,
) -> dict[str, torch.Tensor]:
    """All rows of `final` ((chunk, global row) in batch order) on this process, in that order; chunk c holds
    local_rows[c] rows per process."""
    procs = accelerator.num_processes
    if procs == 1:
        return take_rows(outputs, final, pad_token_id, pad_to_multiple_of)
    owner = [r // local_rows[c] for c, r in final]
    order = [i for q in range(procs) for i in range(len(final)) if owner[i] == q]
    me = accelerator.process_index
    local = [(final[i][0], final[i][1] % local_rows[final[i][0]]) for i in order if owner[i] == me]
    counts = [owner.count(q) for q in range(procs)]
    mine = take_rows(outputs, local, pad_token_id, pad_to_multiple_of)
    gathered = gather_rows(mine, counts, accelerator, pad_token_id)
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    return {key: t[inverse.to(t.device)] for key, t in gathered.items()}
