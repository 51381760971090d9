"""The student as its teacher's speculative draft (transformers' assisted generation).

A student that shares its teacher's tokenizer can draft tokens that the teacher verifies in one
forward pass: greedy, the output is exactly the teacher's own, only faster when the drafts are
accepted often enough. This times the teacher alone and with the student as `assistant_model` on
the same held-out prompts, one prompt at a time (assisted generation takes one row), the two
alternating prompt by prompt and in swapped order on each repeat; each mode's best repeat counts.

Acceptance is the share of drafted tokens the teacher kept. transformers does not report it, so it
is counted with forward hooks: each student forward drafts one token, each teacher forward verifies
one draft and adds one token of its own, so kept drafts = new tokens - teacher forwards.

report["speculative"] = {"prompts", "max_new_tokens", "repeats", "tokens",
    "alone_s": [per repeat], "draft_s": [per repeat], "teacher_tokens_per_s", "draft_tokens_per_s",
    "speedup" (best alone time / best assisted time), "speedup_repeats": [alone_s / draft_s per repeat],
    "acceptance", "drafted", "accepted", "identical" (prompts whose outputs match), "why" (when off)}
"""

from __future__ import annotations

import time

from finetuner import generation
from finetuner.formatting import encode_prompt, render_messages_prompt, render_prompt

PROMPTS = 4  # held-out prompts timed (one at a time, so each costs a full greedy answer per mode)
REPEATS = 3
MAX_NEW_TOKENS = 64


def shares_tokenizer(teacher_tokenizer, student_tokenizer) -> bool:
    """The same vocabulary and the same stop token: what a draft needs to propose the teacher's ids."""
    return (teacher_tokenizer.get_vocab() == student_tokenizer.get_vocab()
            and teacher_tokenizer.eos_token_id == student_tokenizer.eos_token_id)


def when(setting: str, teacher_has_weights: bool, same_tokenizer: bool) -> str | None:
    """Why the speculative benchmark does not run (None when it does)."""
    if setting == "false":
        return "speculative_benchmark false"
    if not teacher_has_weights:
        return "the teacher answered from a file (no weights here to verify drafts)"
    if not same_tokenizer:
        return "the student's tokenizer differs from the teacher's"
    return None


class _Forwards:
    """Counts a model's forward calls while in a `with` block."""

    def __init__(self, model):
        self.module = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.calls = 0

    def __enter__(self):
        self.handle = self.module.register_forward_hook(lambda *_: self._count())
        return self

    def _count(self) -> None:
        self.calls += 1

    def __exit__(self, *exc) -> None:
        self.handle.remove()


def _ids(tokenizer, prompt) -> list[int]:
    text = render_messages_prompt(tokenizer, prompt) if isinstance(prompt, list) else render_prompt(tokenizer, prompt)
    return encode_prompt(tokenizer, [text])[0]


def _one(teacher, draft, ids: list[int], max_new_tokens: int, pad: int) -> tuple[float, list[int], int, int]:
    """(seconds, new tokens, teacher forwards, draft forwards) of one greedy answer."""
    _sync(teacher)
    with _Forwards(teacher) as verified:
        start = time.perf_counter()
        if draft is None:
            tokens = generation.generate(teacher, [ids], max_new_tokens, pad)
            drafted = 0
        else:
            with _Forwards(draft) as drafts:
                tokens = generation.generate(teacher, [ids], max_new_tokens, pad, assistant_model=draft)
            drafted = drafts.calls
        _sync(teacher)
        seconds = time.perf_counter() - start
    return seconds, tokens[0].tolist(), verified.calls, drafted


def _sync(model) -> None:
    if getattr(model.device, "type", "cpu") == "cuda":
        import torch

        torch.cuda.synchronize()


def measure(teacher, student, tokenizer, prompts: list, max_new_tokens: int = MAX_NEW_TOKENS,
            repeats: int = REPEATS, on_answer=None) -> dict:
    """Time the teacher alone and with `student` drafting, alternately; see the module docstring.
    on_answer() is called after each timed answer (2 x prompts x repeats of them)."""
    teacher.eval()
    student.eval()
    pad = generation.pad_id(tokenizer)
    encoded = [_ids(tokenizer, p) for p in prompts]
    config = student.generation_config
    start_tokens = config.num_assistant_tokens  # the "heuristic" schedule changes it after each call
    _one(teacher, student, encoded[0], 2, pad)  # one-off setup of both paths, untimed
    alone_s, draft_s = [0.0] * repeats, [0.0] * repeats
    outputs: dict[bool, list] = {False: [None] * len(encoded), True: [None] * len(encoded)}
    accepted = drafted = 0
    for r in range(repeats):
        config.num_assistant_tokens = start_tokens
        for i, ids in enumerate(encoded):
            for assisted in ((False, True) if (r + i) % 2 == 0 else (True, False)):
                seconds, tokens, verified, drafts = _one(teacher, student if assisted else None, ids,
                                                         max_new_tokens, pad)
                (draft_s if assisted else alone_s)[r] += seconds
                outputs[assisted][i] = tokens
                if assisted and r == 0:
                    drafted += drafts
                    accepted += len(tokens) - verified
                if on_answer is not None:
                    on_answer()
    config.num_assistant_tokens = start_tokens
    tokens = sum(len(t) for t in outputs[False])
    best_alone, best_draft = min(alone_s), min(draft_s)
    return {"prompts": len(encoded), "max_new_tokens": max_new_tokens, "repeats": repeats, "tokens": tokens,
            "alone_s": [round(s, 3) for s in alone_s], "draft_s": [round(s, 3) for s in draft_s],
            "teacher_tokens_per_s": round(tokens / best_alone, 2), "draft_tokens_per_s": round(tokens / best_draft, 2),
            "speedup": round(best_alone / best_draft, 3),
            "speedup_repeats": [round(a / d, 3) for a, d in zip(alone_s, draft_s)],
            "acceptance": round(accepted / drafted, 4) if drafted else None, "drafted": drafted,
            "accepted": accepted, "identical": sum(a == b for a, b in zip(outputs[False], outputs[True]))}
