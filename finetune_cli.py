#!/usr/bin/env python
"""finetuner: from "I have a model and some data" to a fine-tuned or distilled model.

The recipe, top to bottom: resolve answers -> summary + confirm -> train -> benchmark -> upload.
The ML stack is imported only after the questions, so the first prompt appears at once.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path

from finetuner import __version__, distributed, ui
from finetuner.config import RunConfig, applies, warnings_for
from finetuner.wizard import (ANSWERS_FILE, find_previous_answers, load_answers, parse_overrides,
                              previous_defaults, resolve, save_answers)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="finetune_cli.py", description=__doc__.splitlines()[0])
    parser.add_argument("--answers", metavar="FILE", help="replay an answers file (no prompts for what it answers)")
    parser.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], help="override one answer")
    parser.add_argument("--defaults", action="store_true", help="take the default for anything unanswered")
    parser.add_argument("--dry-run", action="store_true", help="resolve and validate, print the plan, load nothing")
    parser.add_argument("--yes", "-y", action="store_true", help="skip the confirmation")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty output directory")
    parser.add_argument("--resume", action="store_true", help="continue from the output directory's last checkpoint")
    parser.add_argument("--cache-teacher", action="store_true",
                        help="fill the teacher cache (teacher_cache) and stop; train later, on any machine")
    parser.add_argument("--generate-only", action="store_true",
                        help="stop after the teacher has written the responses (distillation_mode responses/hybrid)")
    parser.add_argument("--benchmark-only", metavar="OUTPUT_DIR", help="benchmark an existing output directory")
    parser.add_argument("--upload-only", metavar="OUTPUT_DIR", help="upload an existing output directory")
    parser.add_argument("--chat", metavar="OUTPUT_DIR", help="chat with a finished run's model in the terminal")
    parser.add_argument("--compare", action="store_true",
                        help="with --chat: the teacher (or base model) answers beside it")
    parser.add_argument("--verbose", action="store_true", help="show library warnings instead of one dimmed line")
    parser.add_argument("--show-samples", type=int, default=3, metavar="N",
                        help="sample generations to show after benchmarking (default 3)")
    parser.add_argument("--write-launch", metavar="DIR",
                        help="write accelerate configs and launch commands (one GPU, DDP, FSDP, DeepSpeed "
                             "ZeRO-2/3, multi-node) for these answers into DIR, then stop")
    parser.add_argument("--version", action="version", version=f"finetuner {__version__}")
    return parser.parse_args(argv)


# ---- answers --------------------------------------------------------------------------------

PATH_KEYS = ("model", "teacher", "student", "output_dir", "dataset")  # Tab completes file names


def ask_at_terminal(question, default, answers):
    """Prompt for one answer with questionary; raises KeyboardInterrupt on Ctrl-C.

    Text answers are not prefilled: the default shows greyed out and Enter takes it, so typing
    replaces it. A bad answer is explained on the line right under the prompt (by the caller)."""
    import questionary
    from prompt_toolkit.formatted_text import FormattedText

    help_text = question.help_for(answers)
    if help_text:
        ui.console.print(f"  [dim]{ui.escape(help_text)}[/]")
    message = question.text(answers)
    if question.kind == "select":
        choices = [questionary.Choice(title, value=value) for title, value in question.choices]
        chosen = next((c for c in choices if c.value == default), None)
        return questionary.select(message, choices=choices, default=chosen).unsafe_ask()
    if question.kind == "confirm":
        return questionary.confirm(message, default=bool(default)).unsafe_ask()
    if question.kind == "secret":
        return questionary.password(message).unsafe_ask()
    shown = "" if default is None else str(default)
    placeholder = FormattedText([("fg:ansibrightblack", shown)])
    prompt = questionary.path if question.key in PATH_KEYS else questionary.text
    typed = prompt(message, placeholder=placeholder).unsafe_ask()
    return default if not str(typed).strip() else typed


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
    previous = {}
    if interactive and not args.answers and (found := find_previous_answers()):
        previous = previous_defaults(found)
        ui.info(f"The defaults are your previous answers, from {found} (Enter keeps them).")
    return resolve_config(args, given, previous)


def resolve_config(args: argparse.Namespace, given: dict, previous: dict) -> tuple[RunConfig, dict]:
    interactive = ui.is_interactive()
    # The main process alone checks the output directory: it is also the one that writes into it.
    # Writing launch configs runs nothing, so the output directory is checked when the run starts.
    checks = {"output_dir": output_dir_check(args.overwrite, args.resume, interactive)} \
        if distributed.is_main_process() and not args.write_launch else {}
    if given.get("teacher_cache") and not given.get("teacher_api_base"):
        checks["teacher"] = teacher_check(given)  # a complete cache may stand in for a teacher not here
    answers, secrets = resolve(given, ask_at_terminal if interactive else None, use_defaults=args.defaults,
                               checks=checks, token_found=hub_token_configured, previous=previous)
    return RunConfig(**answers), secrets


def teacher_check(given: dict):
    """The teacher must exist, unless the answers' teacher_cache already holds its complete cache."""
    from finetuner.sources import check_model

    def check(value: str) -> str | None:
        problem = check_model(value)
        if problem is None or not given.get("teacher_cache"):
            return problem
        from finetuner.teachers import topk_cache

        manifest = topk_cache.complete_manifest(Path(str(given["teacher_cache"])))
        return None if manifest and manifest["fingerprint"]["teacher"] == value else problem

    return check


def generate_stage(cfg: RunConfig):
    """Distillation modes responses/hybrid: the teacher writes the responses (resumable cache)."""
    if not cfg.teacher_writes:
        return None
    from finetuner.teachers.generate import write_for

    # Under a launcher the main process writes the responses (its cache); the others then find them
    # all there and request none, so no prompt is paid for twice.
    return distributed.main_process_first(lambda: write_for(cfg, resume_command(cfg.output_dir)))


def edit_one_setting(args: argparse.Namespace, cfg: RunConfig, secrets: dict) -> tuple[RunConfig, dict]:
    """Ask one setting again (its current value as the default), then any question the change opens."""
    import questionary

    from finetuner.questions import QUESTIONS

    answers = cfg.to_answers()
    editable = [q for q in QUESTIONS if q.ask and q.key in answers]
    key = questionary.select("Which setting? (type to filter)",
                             choices=[questionary.Choice(f"{q.key} = {answers[q.key]}", q.key) for q in editable],
                             use_search_filter=True, use_jk_keys=False).unsafe_ask()
    given = {k: v for k, v in answers.items() if k != key}
    new_cfg, new_secrets = resolve_config(args, given, previous={key: answers[key]})
    return new_cfg, {**secrets, **new_secrets}


def show_plan(cfg: RunConfig, checked, estimate) -> None:
    """The settings, then what they add up to; each module that knows a fact adds its rows here."""
    from finetuner import plan

    from finetuner.memory_plan import plan_rows as memory_rows
    from finetuner.objectives.layer_map import plan_rows as hidden_state_rows
    from finetuner.teachers.topk_cache import plan_rows as cache_rows

    rows = list(cfg.to_answers().items())
    rows += plan.derived_facts(cfg, checked, estimate)
    rows += hidden_state_rows(cfg)
    rows += cache_rows(cfg, checked.data)
    rows += memory_rows(cfg)
    ui.table("Plan", rows)
    for note in [*warnings_for(cfg), *plan.plan_warnings(cfg, checked)]:
        ui.warning(note)


def confirm_start() -> str:
    """'start', 'edit' (change one setting, then see the plan again) or 'quit'."""
    import questionary

    return questionary.select("Start?", choices=[
        questionary.Choice("Yes, start", "start"),
        questionary.Choice("Change a setting first", "edit"),
        questionary.Choice("No, not now (the answers are saved for next time)", "quit"),
    ]).unsafe_ask()


def resume_command(out_dir: str) -> str:
    # Under torchrun / accelerate launch, the same launcher and process count resume the run.
    launcher = f"<the same launcher, {distributed.world_size()} processes> " if distributed.world_size() > 1 \
        else "python "
    return f"{launcher}finetune_cli.py --answers {Path(out_dir) / ANSWERS_FILE} --resume --yes"


# ---- the recipe -----------------------------------------------------------------------------

def run(args: argparse.Namespace) -> int:
    if args.benchmark_only:
        return benchmark_only(args.benchmark_only, args.show_samples, parse_overrides(args.set))
    if args.upload_only:
        return upload_only(args)
    if args.chat:
        return chat_only(args)

    cfg, secrets = gather(args)
    if args.write_launch:
        return write_launch_stage(cfg, Path(args.write_launch))
    from finetuner import plan

    while True:
        checked = plan.preflight(cfg)  # everything cheap that could fail, before the plan and "Start?"
        plan.show_example(checked)
        estimate = plan.estimate(cfg, checked, dry_run=args.dry_run)
        show_plan(cfg, checked, estimate)
        answers_path = Path(cfg.output_dir) / ANSWERS_FILE
        if args.dry_run:
            if ui.is_interactive() and not args.answers:
                ui.success(f"Answers saved to {save_answers(answers_path, cfg.to_answers())}")
            ui.success("Dry run: every setting and check passed; no weights were loaded, nothing was trained.")
            return 0
        choice = confirm_start() if ui.is_interactive() and not args.yes else "start"
        if choice == "start":
            break
        if choice == "quit":
            save_answers(answers_path, cfg.to_answers())
            ui.info(f"Nothing started. Answers saved to {answers_path} "
                    f"(start later: python finetune_cli.py --answers {answers_path})")
            return 0
        cfg, secrets = edit_one_setting(args, cfg, secrets)
    if distributed.is_main_process():
        save_answers(answers_path, cfg.to_answers())
    ui.info(f"Answers saved to {answers_path} (replay: python finetune_cli.py --answers {answers_path})")
    started = time.perf_counter()

    teacher_data = generate_stage(cfg)
    if args.generate_only:
        if teacher_data is None:
            raise ui.UserError("--generate-only needs a teacher that writes",
                               hint="set distillation_mode responses or hybrid")
        ui.success(f"Generation done; read or edit {Path(cfg.output_dir) / 'teacher_responses.jsonl'}, then "
                   f"train with:  {resume_command(cfg.output_dir)}")
        return 0

    from finetuner.trainer import LLMFineTuner

    from finetuner import noise

    tuner = LLMFineTuner(cfg, teacher_data, prepared=checked.data)
    if args.cache_teacher:
        return cache_teacher_stage(tuner, answers_path)
    with noise.routed_to_log(cfg.output_dir, args.verbose):
        result = tuner.train_distillation(resume=args.resume) if cfg.is_distillation else tuner.train(resume=args.resume)
    if result.interrupted:
        distributed.finish()
        ui.warning(f"Interrupted; checkpoint saved. Resume with:  {resume_command(cfg.output_dir)}")
        return 130
    ui.success(f"Model saved in {result.model_dir}")
    # Every rank trains the baseline, as it trained the student; then the ranks part.
    baseline_stopped = cfg.is_distillation and cfg.sft_baseline and sft_baseline_stage(cfg) == 130
    distributed.finish()
    if baseline_stopped:
        return 130
    if not distributed.is_main_process():
        return 0  # the main process saved the model; it alone benchmarks and uploads
    from finetuner import model_card

    model_card.write_adapter_card(cfg, cfg.output_dir)

    if cfg.benchmark and applies("benchmark", cfg):
        with noise.routed_to_log(cfg.output_dir, args.verbose):
            benchmark_stage(cfg, args.show_samples)
    uploaded = upload_stage(cfg, secrets.get("hub_token")) if cfg.upload else None
    from finetuner import summary

    summary.show(cfg.output_dir, result.seconds, time.perf_counter() - started,
                 estimate=estimate.seconds, hub_repo=cfg.hub_repo, uploaded=uploaded)
    offer_launch(cfg)
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


def cache_teacher_stage(tuner, answers_path: Path) -> int:
    """--cache-teacher: fill the cache and stop; the same answers file trains from it later."""
    cache = tuner.build_teacher_cache()
    distributed.finish()
    if not distributed.is_main_process():
        return 0
    ui.success(f"Teacher cache ready in {cache}. Train (here or on a machine with a copy of it at the same path, "
               f"or with teacher_cache set to the copy's path):  python finetune_cli.py --answers {answers_path}")
    return 0


def write_launch_stage(cfg: RunConfig, directory: Path) -> int:
    """The answers saved beside accelerate configs for every way to scale out, and how to launch each."""
    from finetuner import launch

    answers = save_answers(directory / ANSWERS_FILE, cfg.to_answers())
    written = launch.write_launch(directory, str(answers.resolve()), launch.gpu_count())
    ui.success(f"Wrote {len(written)} files to {directory}; start with {directory / launch.GUIDE}")
    return 0


def offer_launch(cfg: RunConfig) -> None:
    """After an interactive run: the same run on more GPUs or machines is one launcher away."""
    if not ui.is_interactive():
        return
    import questionary

    if questionary.confirm("Write launch configs to run this on several GPUs or machines?",
                           default=False).unsafe_ask():
        write_launch_stage(cfg, Path(cfg.output_dir) / "launch")


def benchmark_stage(cfg: RunConfig, show_samples: int) -> None:
    """Benchmark a finished run; a run with nothing to benchmark says so and still succeeds."""
    from finetuner import artifacts
    from finetuner.evaluation import benchmark_output

    if not artifacts.read_heldout(Path(cfg.output_dir)):
        ui.warning("Benchmark skipped: no held-out prompts with answers to score "
                   "(plain text, or eval_fraction 0); the model is saved")
        return
    benchmark_output(cfg, cfg.output_dir, show_samples=show_samples)


def benchmark_only(out_dir: str, show_samples: int, overrides: dict) -> int:
    cfg = config_of(out_dir, overrides)
    from finetuner.evaluation import benchmark_output

    benchmark_output(cfg, out_dir, show_samples=show_samples)
    return 0


def chat_only(args: argparse.Namespace) -> int:
    from finetuner import chat, noise

    with noise.routed_to_log(args.chat, args.verbose):
        chat.run(config_of(args.chat, parse_overrides(args.set)), args.chat, compare=args.compare)
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


def upload_stage(cfg: RunConfig, token: str | None, out_dir: str | None = None) -> str:
    from finetuner import hub

    url = hub.publish(cfg, out_dir or cfg.output_dir, token=token)
    ui.success(f"Uploaded to {url}")
    return url


def config_of(out_dir: str, overrides: dict | None = None) -> RunConfig:
    """The RunConfig an output directory was made with (its answers file)."""
    path = Path(out_dir) / ANSWERS_FILE
    if not path.is_file():
        raise ui.UserError(f"{out_dir} has no {ANSWERS_FILE}; is it a finetuner output directory?")
    given = {**load_answers(path), **(overrides or {}), "output_dir": out_dir}
    answers, _ = resolve(given, None, use_defaults=True, token_found=lambda: True)
    return RunConfig(**answers)


def _drop_interrupted_cleanup(unraisable) -> None:
    """A Ctrl-C that lands in a garbage-collection callback is ignored by Python, which prints a
    traceback for it; the user already pressed Ctrl-C, so the traceback only alarms."""
    if not isinstance(unraisable.exc_value, KeyboardInterrupt):
        sys.__unraisablehook__(unraisable)


class _DropLateInterrupt(logging.Filter):
    """A Ctrl-C that reaches prompt_toolkit just as a prompt closes makes asyncio log a traceback
    from KeyProcessor.send_sigint; the interrupt itself is handled, so the traceback only alarms."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "send_sigint" not in record.getMessage()


def main(argv: list[str] | None = None) -> int:
    sys.unraisablehook = _drop_interrupted_cleanup
    logging.getLogger("asyncio").addFilter(_DropLateInterrupt())
    args = parse_args(argv)
    distributed.quiet_other_ranks()  # errors still show, marked with their rank
    try:
        return run(args)
    except ui.UserError as err:
        ui.error(err, rank=None if distributed.is_main_process() else distributed.rank())
        return 1
    except KeyboardInterrupt:
        ui.err_console.print("\nCancelled.")
        return 130


if __name__ == "__main__":
    status = main()
    # The work is done: a late Ctrl-C must not print a traceback while torch's modules shut down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(status)
