"""`--chat OUTPUT_DIR`: talk to the trained model in the terminal.

Each turn is written in the training prompt format (`formatting.render_messages_prompt`, the same
token ids training and the benchmark use) and the answer streams token by token (transformers'
TextStreamer). The conversation carries over turns until /reset. With `--compare`, the teacher
(distillation) or the base model (fine-tuning) answers the same history, shown side by side.
"""

from __future__ import annotations

from pathlib import Path

from finetuner import models, ui

HELP = ("Type a message; /reset forgets the conversation, /exit (or Ctrl-D) quits. "
        "Answers stop after max_new_tokens (--set max_new_tokens=N).")


def _encode(tokenizer, messages: list[dict]) -> list[int]:
    from finetuner.formatting import encode_prompt
    from finetuner.formatting import render_messages_prompt

    return encode_prompt(tokenizer, [render_messages_prompt(tokenizer, messages)])[0]


def reply(model, tokenizer, messages: list[dict], stream: bool, max_new_tokens: int) -> str:
    """The model's answer to the conversation so far (greedy), printed as it is generated when `stream`."""
    from transformers import TextStreamer

    from finetuner import generation

    ids = _encode(tokenizer, messages)
    config = model.config
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if limit:
        max_new_tokens = min(max_new_tokens, limit - len(ids))
    if max_new_tokens < 1:
        ui.warning("the conversation is longer than the model's context; /reset to start again")
        return ""
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True) if stream else None
    new_tokens = generation.generate(model, [ids], max_new_tokens, generation.pad_id(tokenizer), streamer=streamer)
    return tokenizer.decode(new_tokens[0], skip_special_tokens=True).strip()


def _saved_tokenizer(folder: Path):
    """The tokenizer saved with the model or adapter (an adapter folder has no config.json)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _other_model(cfg) -> tuple[str, str]:
    """(label, model name) of what `--compare` sets beside the trained model."""
    return ("teacher", cfg.teacher) if cfg.is_distillation else ("base model", cfg.model)


def run(cfg, out_dir: str | Path, compare: bool = False, read=input) -> None:
    from finetuner.evaluation import trained_model

    out = Path(out_dir)
    ui.step(f"Loading the model in {out}")
    model, folder = trained_model(out)
    model.eval()
    tokenizer = _saved_tokenizer(folder)
    other = None
    if compare:
        label, name = _other_model(cfg)
        ui.step(f"Loading the {label} ({name}) to compare")
        other = (label, models.load_model(name, for_training=False), models.load_tokenizer(name))
    ui.info(HELP)
    history: list[dict] = []
    while True:
        try:
            text = read("you> ").strip()
        except EOFError:
            ui.info("")
            return
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return
        if text == "/reset":
            history = []
            ui.info("(conversation forgotten)")
            continue
        if text.startswith("/"):
            ui.warning(f"unknown command {text}; {HELP}")
            continue
        messages = [*history, {"role": "user", "content": text}]
        if other is None:
            ui.console.print("[bold green]model>[/] ", end="")
            answer = reply(model, tokenizer, messages, stream=True, max_new_tokens=cfg.max_new_tokens)
        else:
            answer = reply(model, tokenizer, messages, stream=False, max_new_tokens=cfg.max_new_tokens)
            label, other_model, other_tokenizer = other
            _side_by_side(answer, label, reply(other_model, other_tokenizer, messages, stream=False,
                                               max_new_tokens=cfg.max_new_tokens))
        history = [*messages, {"role": "assistant", "content": answer}]


def _side_by_side(answer: str, label: str, other_answer: str) -> None:
    from rich.table import Table
    from rich.text import Text

    grid = Table(show_lines=False, expand=True)
    grid.add_column("trained model", ratio=1)
    grid.add_column(label, ratio=1)
    grid.add_row(Text(answer), Text(other_answer))
    ui.console.print(grid)
