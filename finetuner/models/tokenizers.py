"""Teacher and student must share a tokenizer for their distributions to be compared."""

from __future__ import annotations



from finetuner.ui import UserError


def check_tokenizers_match(teacher_tok, student_tok) -> int:
    """The vocabulary size teacher and student share, for slicing logits before the KL term.

    The tokenizers must agree on every shared id and on the special tokens. One may have extra
    ids after the shared range only when they are added tokens (padding/reserved entries), since
    extra BPE merges would split ordinary text differently.
    """
    teacher_vocab, student_vocab = teacher_tok.get_vocab(), student_tok.get_vocab()
    shared = min(_vocab_end(teacher_vocab), _vocab_end(student_vocab))
    problems = _special_token_differences(teacher_tok, student_tok)
    by_id = [{i: t for t, i in vocab.items() if i < shared} for vocab in (teacher_vocab, student_vocab)]
    differing = [i for i in range(shared) if by_id[0].get(i) != by_id[1].get(i)]
    if differing:
        problems.append(f"{len(differing)} of the first {shared} token ids map to different tokens "
                        f"(first at id {differing[0]}: {by_id[0].get(differing[0])!r} vs "
                        f"{by_id[1].get(differing[0])!r})")
    for role, tok, vocab in (("teacher", teacher_tok, teacher_vocab), ("student", student_tok, student_vocab)):
        added = {t.content for t in tok.added_tokens_decoder.values()}
        extra = [t for t, i in vocab.items() if i >= shared and t not in added]
        if extra:
            problems.append(f"the {role} has {len(extra)} regular tokens beyond id {shared - 1} "
                            f"(e.g. {extra[0]!r})")
    if problems:
        raise UserError("the teacher and student tokenizers differ, so the student can't learn the "
                        "teacher's token probabilities", details=problems,
                        hint="use distillation_mode responses (the teacher writes answers; any tokenizer), "
                             "pick a student from the teacher's family, or derive one with student_layers")
    return shared


def _vocab_end(vocab: dict[str, int]) -> int:
    return max(vocab.values()) + 1


def _special_token_differences(a, b) -> list[str]:
    # Pad is left out: we set it to EOS when a tokenizer has none, and it never reaches the loss.
    return [f"{attr}: {getattr(a, attr)!r} vs {getattr(b, attr)!r}"
            for attr in ("bos_token", "eos_token", "unk_token") if getattr(a, attr) != getattr(b, attr)]


# ---- configs (no weights) --------------------------------------------------------------------

