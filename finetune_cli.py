#!/usr/bin/env python
"""finetuner: from "I have a model and some data" to a fine-tuned or distilled model.

The recipe, top to bottom: resolve answers -> summary + confirm -> train -> benchmark -> upload.
The ML stack is imported only after the questions, so the first prompt appears at once.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from finetuner import __version__, ui
from finetuner.config import RunConfig, warnings_for
from finetuner.wizard import ANSWERS_FILE, accept, load_answers, parse_overrides, resolve, save_answers


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="finetune_cli.py", description=__doc__.splitlines()[0])
    parser.add_argument("--answers", metavar="FILE", help="replay an answers file (no prompts for what it answers)")
    parser.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], help="override one answer")
    parser.add_argument("--defaults", action="store_true", help="take the default for anything unanswered")
    parser.add_argument("--dry-run", action="store_true", help="resolve and validate, print the plan, load nothing")
    parser.add_argument("--yes", "-y", action="store_true", help="skip the confirmation")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty output directory")
    parser.add_argument("--resume", action="store_true", help="continue from the output directory's last checkpoint")
    parser.add_argument("--generate-only", action="store_true",
                        help="stop after the teacher has written the responses (distillation_mode responses/hybrid)")
    parser.add_argument("--benchmark-only", metavar="OUTPUT_DIR", help="benchmark an existing output directory")
    parser.add_argument("--upload-only", metavar="OUTPUT_DIR", help="upload an existing output directory")
    parser.add_argument("--show-samples", type=int, default=3, metavar="N",
                        help="sample generations to show after benchmarking (default 3)")
    parser.add_argument("--version", action="version", version=f"finetuner {__version__}")
    return parser.parse_args(argv)


# ---- answers --------------------------------------------------------------------------------

def ask_at_terminal(question, default, answers):
    """Prompt for one answer with questionary; raises KeyboardInterrupt on Ctrl-C."""
    import questionary

    if question.help:
        ui.console.print(f"  [dim]{ui._escape(question.help)}[/]")
    message = question.text(answers)
    if question.kind == "select":
        choices = [questionary.Choice(title, value=value) for title, value in question.choices]
        chosen = next((c for c in choices if c.value == default), None)
        return questionary.select(message, choices=choices, default=chosen).unsafe_ask()
    if question.kind == "confirm":
        return questionary.confirm(message, default=bool(default)).unsafe_ask()
    if question.kind == "secret":
        return questionary.password(message).unsafe_ask()

    def validate(text: str):
        return accept(question, text, answers, {})[1] or True

    return questionary.text(message, default="" if default is None else str(default), validate=validate,
                            validate_while_typing=False).unsafe_ask()


def output_dir_check(overwrite: bool, resume: bool, interactive: bool):
    """An existing non-empty output directory is used only with consent; nothing is ever deleted."""

    def check(value: str) -> str | None:
        path = Path(value).expanduser()
        if path.exists() and not path.is_dir():
            return f"{value} exists and is a file, not a directory"
        if not path.exists() or overwrite or resume:
            return None
        if not [p for p in path.iterdir() if p.name != ANSWERS_FILE]:
            return None
        if interactive:
            import questionary

            if questionary.confirm(f"{value} already has files. Write into it anyway? Nothing is deleted; "
                                   "files with the same names are replaced.", default=False).unsafe_ask():
                return None
            return "choose another directory"
        return f"{value} exists and is not empty; pass --overwrite to write into it, or choose another directory"

    return check


def hub_token_configured() -> bool:
    from finetuner.hub import find_token

    return find_token() is not None


def gather(args: argparse.Namespace) -> tuple[RunConfig, dict]:
    given = load_answers(args.answers) if args.answers else {}
    given.update(parse_overrides(args.set))
    interactive = ui.is_interactive()
    checks = {"output_dir": output_dir_check(args.overwrite, args.resume, interactive)}
    answers, secrets = resolve(given, ask_at_terminal if interactive else None, use_defaults=args.defaults,
                               checks=checks, token_found=hub_token_configured)
    return RunConfig(**answers), secrets


def show_plan(cfg: RunConfig) -> None:
    from finetuner.objectives.layer_map import plan_rows as hidden_state_rows

    ui.table("Plan", [*cfg.to_answers().items(), *hidden_state_rows(cfg)])
    for note in warnings_for(cfg):
        ui.warning(note)


def check_tokenizers(cfg: RunConfig) -> None:
    """Logits distillation needs one tokenizer: compare them before "Start?" (no weights loaded)."""
    if not cfg.is_distillation or cfg.distillation_mode == "responses" or cfg.teacher == cfg.student:
        return
    from finetuner import models

    models.check_tokenizers_match(models.load_tokenizer(cfg.teacher), models.load_tokenizer(cfg.student))


def generate_stage(cfg: RunConfig):
    """Distillation modes responses/hybrid: the teacher writes the responses (resumable cache)."""
    if not cfg.teacher_writes:
        return None
    from finetuner import models
    from finetuner.teachers.generate import generate_stage as write

    ui.step(f"The teacher ({cfg.teacher}) writes the responses")
    return write(cfg, models.load_tokenizer(cfg.student), resume_command(cfg.output_dir))


def confirm_start() -> bool:
    import questionary

    return bool(questionary.confirm("Start?", default=True).unsafe_ask())


def resume_command(out_dir: str) -> str:
    return f"python finetune_cli.py --answers {Path(out_dir) / ANSWERS_FILE} --resume --yes"


# ---- the recipe -----------------------------------------------------------------------------

def run(args: argparse.Namespace) -> int:
    if args.benchmark_only:
        return benchmark_only(args.benchmark_only, args.show_samples)
    if args.upload_only:
        return upload_only(args)

    cfg, secrets = gather(args)
    show_plan(cfg)
    check_tokenizers(cfg)
    answers_path = Path(cfg.output_dir) / ANSWERS_FILE
    if args.dry_run:
        if ui.is_interactive() and not args.answers:
            ui.success(f"Answers saved to {save_answers(answers_path, cfg.to_answers())}")
        ui.success("Dry run: every setting is valid; nothing was loaded or trained.")
        return 0
    if ui.is_interactive() and not args.yes and not confirm_start():
        ui.info("Nothing started.")
        return 0
    save_answers(answers_path, cfg.to_answers())
    ui.info(f"Answers saved to {answers_path} (replay: python finetune_cli.py --answers {answers_path})")

    teacher_data = generate_stage(cfg)
    if args.generate_only:
        if teacher_data is None:
            raise ui.UserError("--generate-only needs a teacher that writes",
                               hint="set distillation_mode responses or hybrid")
        ui.success(f"Generation done; read or edit {Path(cfg.output_dir) / 'teacher_responses.jsonl'}, then "
                   f"train with:  {resume_command(cfg.output_dir)}")
        return 0

    from finetuner.trainer import LLMFineTuner

    tuner = LLMFineTuner(cfg, teacher_data)
    result = tuner.train_distillation(resume=args.resume) if cfg.is_distillation else tuner.train(resume=args.resume)
    if result.interrupted:
        ui.warning(f"Interrupted; checkpoint saved. Resume with:  {resume_command(cfg.output_dir)}")
        return 130
    ui.success(f"Model saved in {result.model_dir}")
    if cfg.is_distillation and cfg.sft_baseline and sft_baseline_stage(cfg) == 130:
        return 130

    if cfg.benchmark:
        from finetuner.evaluation import benchmark_output

        benchmark_output(cfg, cfg.output_dir, show_samples=args.show_samples)
    if cfg.upload:
        upload_stage(cfg, secrets.get("hub_token"))
    return 0


def sft_baseline_stage(cfg: RunConfig) -> int:
    """Train the same student plainly (alpha 1) beside the distilled one, for the benchmark to compare."""
    from finetuner.baseline import train_sft_baseline

    ui.step("Training the SFT baseline: the same student, rows and steps, plain fine-tuning (alpha 1)")
    result = train_sft_baseline(cfg)
    if result.interrupted:
        ui.warning("Interrupted while training the SFT baseline; the distilled model is saved. "
                   f"Benchmark it with:  python finetune_cli.py --benchmark-only {cfg.output_dir}")
        return 130
    ui.success(f"SFT baseline saved in {result.model_dir}")
    return 0


def benchmark_only(out_dir: str, show_samples: int) -> int:
    cfg = config_of(out_dir)
    from finetuner.evaluation import benchmark_output

    benchmark_output(cfg, out_dir, show_samples=show_samples)
    return 0


def upload_only(args: argparse.Namespace) -> int:
    out_dir = args.upload_only
    overrides = parse_overrides(args.set)
    cfg = config_of(out_dir, {"upload": True, **overrides})
    token = None
    if not hub_token_configured() and ui.is_interactive():
        import questionary

        token = questionary.password("Hugging Face token (hidden; write access)").unsafe_ask()
    upload_stage(cfg, token, out_dir)
    return 0


def upload_stage(cfg: RunConfig, token: str | None, out_dir: str | None = None) -> None:
    from finetuner import hub

    url = hub.publish(cfg, out_dir or cfg.output_dir, token=token)
    ui.success(f"Uploaded to {url}")


def config_of(out_dir: str, overrides: dict | None = None) -> RunConfig:
    """The RunConfig an output directory was made with (its answers file)."""
    path = Path(out_dir) / ANSWERS_FILE
    if not path.is_file():
        raise ui.UserError(f"{out_dir} has no {ANSWERS_FILE}; is it a finetuner output directory?")
    given = {**load_answers(path), **(overrides or {}), "output_dir": out_dir}
    answers, _ = resolve(given, None, use_defaults=True, token_found=lambda: True)
    return RunConfig(**answers)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except ui.UserError as err:
        ui.error(err)
        return 1
    except KeyboardInterrupt:
        ui.err_console.print("\nCancelled.")
        return 130


if __name__ == "__main__":
    sys.exit(main())
