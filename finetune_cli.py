#!/usr/bin/env python
"""finetuner: from "I have a model and some data" to a fine-tuned or distilled model.

The recipe, top to bottom (`run`): resolve answers -> plan + confirm -> generate (a teacher that
writes) -> train -> SFT baseline -> benchmark -> upload -> summary; each stage is a function below.
The ML stack is imported only after the questions, so the first prompt appears at once.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from finetuner import __version__, distributed, noise, ui
from finetuner.config import RunConfig, applies
from finetuner.wizard.answers import answers_kept, answers_path, parse_overrides, replay_command, resume_command, save_answers
from finetuner.wizard.gather import AnswerOptions, edit_one_setting, gather
from finetuner.wizard.prompts import confirm_start


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="finetune_cli.py", description=__doc__.splitlines()[0])
    parser.add_argument("--answers", metavar="FILE", help="replay an answers file (no prompts for what it answers)")
    parser.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], help="override one answer")
    parser.add_argument("--defaults", action="store_true", help="take the default for anything unanswered")
    parser.add_argument("--dry-run", action="store_true", help="resolve and validate, print the plan, load nothing")
    parser.add_argument("--yes", "-y", action="store_true",
                        help="ask nothing: no confirmation, no question (a missing answer is an error)")
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


# ---- the recipe -----------------------------------------------------------------------------

def run(args: argparse.Namespace) -> int:
    """The run, top to bottom; each stage is a function below, in the order the run reaches it."""
    if args.benchmark_only or args.upload_only or args.chat:
        return finished_run_stage(args)
    cfg, secrets = gather(answer_options(args))
    if args.write_launch:
        return write_launch_stage(cfg.to_answers(), Path(args.write_launch))
    confirmed = plan_stage(args, cfg, secrets)
    if confirmed is None:
        return 0  # a dry run, or "not now"
    cfg, secrets, checked, estimate = confirmed
    from finetuner.phase_clock import PhaseClock

    clock = PhaseClock()
    with clock.phase("teacher generation"):
        written = generate_stage(cfg)
    if args.generate_only:
        return generate_only_stage(written, cfg.output_dir)
    if args.cache_teacher:
        return cache_teacher_stage(cfg, checked, written, answers_path(cfg.output_dir))
    with clock.phase("before training"):  # model preparation and the teacher cache; training is taken out
        result = train_stage(cfg, checked, written, args.resume, args.verbose)
    if result.interrupted:
        return 130
    clock.move("before training", "training", result.seconds)
    # Every rank trains the baseline, as it trained the student; then the ranks part.
    with clock.phase("SFT baseline"):
        baseline_interrupted = checked.recipe.distils and cfg.sft_baseline and sft_baseline_stage(cfg) == 130
    distributed.finish()
    if baseline_interrupted:
        return 130
    if not distributed.is_main_process():
        return 0  # the main process saved the model; it alone benchmarks and uploads
    from finetuner import model_card, summary

    cards_stage(cfg)
    if cfg.benchmark and applies("benchmark", cfg):
        with clock.phase("benchmark"):
            benchmark_stage(cfg, args.show_samples, args.verbose)
        model_card.write_model_card(cfg, cfg.output_dir)  # now with the benchmark's results
    with clock.phase("upload"):
        uploaded = upload_stage(cfg, secrets.get("hub_token")) if cfg.upload else None
    clock.write(Path(cfg.output_dir), estimate)
    summary.show(cfg.output_dir, result.seconds, clock.elapsed(),
                 estimate=estimate.seconds, hub_repo=cfg.hub_repo, uploaded=uploaded)
    offer_launch(cfg.to_answers(), cfg.output_dir)
    return 0


def answer_options(args: argparse.Namespace) -> AnswerOptions:
    # The main process alone checks the output directory: it is also the one that writes into it.
    # Writing launch configs runs nothing, so the output directory is checked when the run starts.
    return AnswerOptions(answers_file=args.answers, overrides=tuple(args.set), use_defaults=args.defaults,
                         overwrite=args.overwrite, resume=args.resume,
                         check_output_dir=distributed.is_main_process() and not args.write_launch)


# ---- plan and confirm -----------------------------------------------------------------------

def plan_stage(args: argparse.Namespace, cfg: RunConfig, secrets: dict):
    """Check, show the plan, and ask "Start?" until the user starts (returns the config, secrets,
    checked data and estimate to run with) or stops (None: a dry run, or "not now")."""
    from finetuner import plan
    from finetuner.benchmark.judge import check_judge_endpoint
    from finetuner.teachers.estimate import check_teacher_endpoint

    while True:
        saved = answers_path(cfg.output_dir)
        try:
            # One request to an API teacher: a wrong model, URL or key stops here, not minutes later.
            check_teacher_endpoint(cfg, warn_only=args.dry_run)
            check_judge_endpoint(cfg, warn_only=args.dry_run)
            checked, estimate = plan.check_and_show(cfg, args.dry_run)
        except ui.UserError as err:
            raise answers_kept(err, cfg.output_dir, cfg.to_answers()) from None
        if args.dry_run:
            if ui.can_ask() and not args.answers:
                ui.success(f"Answers saved to {save_answers(saved, cfg.to_answers())}")
            ui.success("Dry run: every setting and check passed; no weights were loaded, nothing was trained.")
            return None
        choice = confirm_start() if ui.can_ask() else "start"
        if choice == "start":
            break
        if choice == "quit":
            save_answers(saved, cfg.to_answers())
            ui.info(f"Nothing started. Answers saved to {saved} "
                    f"(start later: {replay_command(saved)})")
            return None
        cfg, secrets = edit_one_setting(answer_options(args), cfg, secrets)
    if distributed.is_main_process():
        save_answers(saved, cfg.to_answers())
    ui.info(f"Answers saved to {saved} (replay: {replay_command(saved)})")
    return cfg, secrets, checked, estimate


# ---- generate, train, baseline ----------------------------------------------------------------

def generate_stage(cfg: RunConfig):
    """Distillation modes responses/hybrid: the teacher writes the responses (resumable cache)."""
    if not cfg.teacher_writes:
        return None
    from finetuner.teachers.generate import write_for

    # Under a launcher the main process writes the responses (its cache); the others then find them
    # all there and request none, so no prompt is paid for twice.
    resume = resume_command(cfg.output_dir, distributed.world_size())
    return distributed.main_process_first(lambda: write_for(cfg, resume))


def generate_only_stage(teacher_data, out_dir: str) -> int:
    """--generate-only: stop once the teacher has written, so the responses can be read first."""
    if teacher_data is None:
        raise ui.UserError("--generate-only needs a teacher that writes",
                           hint="set distillation_mode responses or hybrid")
    ui.success(f"Generation done; read or edit {teacher_data.cache_path or Path(out_dir) / 'teacher_responses.jsonl'}, then "
               f"train with:  {resume_command(out_dir, distributed.world_size())}")
    return 0


def cache_teacher_stage(cfg: RunConfig, checked, written, answers: Path) -> int:
    """--cache-teacher: fill the cache and stop; the same answers file trains from it later."""
    from finetuner import training

    cache = training.build_teacher_cache(cfg, checked.recipe, prepared=checked.data, written=written)
    distributed.finish()
    if not distributed.is_main_process():
        return 0
    ui.success(f"Teacher cache ready in {cache}. Train (here or on a machine with a copy of it at the same path, "
               f"or with teacher_cache set to the copy's path):  {replay_command(answers)}")
    return 0


def train_stage(cfg: RunConfig, checked, written, resume: bool, verbose: bool):
    """Train (distil or fine-tune); an interrupted run has saved a checkpoint and says how to resume."""
    from finetuner import training

    with noise.routed_to_log(cfg.output_dir, verbose):
        result = training.train(cfg, checked.recipe, prepared=checked.data, written=written, resume=resume)
    if result.interrupted:
        distributed.finish()
        resume = resume_command(cfg.output_dir, distributed.world_size())
        ui.warning(f"Interrupted; checkpoint saved. Resume with:  {resume}")
    else:
        ui.success(f"Model saved in {result.model_dir}")
    return result


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


# ---- after training: card, benchmark, upload, launch configs ----------------------------------

def cards_stage(cfg: RunConfig) -> None:
    """The model card, as soon as the model is saved: beside an adapter (instead of PEFT's blank
    template) and in the output directory (what an upload sends), for every approach."""
    from finetuner import model_card

    model_card.write_adapter_card(cfg, cfg.output_dir)
    model_card.write_model_card(cfg, cfg.output_dir)


def benchmark_stage(cfg: RunConfig, show_samples: int, verbose: bool = False) -> None:
    """Benchmark a finished run; a run with nothing to benchmark says so and still succeeds."""
    from finetuner import artifacts
    from finetuner.evaluation import benchmark_output

    if not artifacts.read_heldout(Path(cfg.output_dir)):
        ui.warning("Benchmark skipped: no held-out prompts with answers to score "
                   "(plain text, or eval_fraction 0); the model is saved")
        return
    with noise.routed_to_log(cfg.output_dir, verbose):
        benchmark_output(cfg, cfg.output_dir, show_samples=show_samples)


def upload_stage(cfg: RunConfig, token: str | None) -> str:
    from finetuner import hub

    return hub.publish(cfg, cfg.output_dir, token=token)


def write_launch_stage(answers: dict, directory: Path) -> int:
    """The answers saved beside accelerate configs for every way to scale out, and how to launch each."""
    from finetuner import launch

    written = launch.write_launch(directory, answers, launch.gpu_count())
    ui.success(f"Wrote {len(written)} files to {directory}; start with {directory / launch.GUIDE}")
    return 0


def offer_launch(answers: dict, out_dir: str) -> None:
    """After an interactive run: the same run on more GPUs or machines is one launcher away."""
    if ui.can_ask() and ui.confirm("Write launch configs to run this on several GPUs or machines?"):
        write_launch_stage(answers, Path(out_dir) / "launch")


# ---- a finished run's output directory ------------------------------------------------------------

def finished_run_stage(args: argparse.Namespace) -> int:
    """--benchmark-only, --upload-only or --chat: work on a finished run, from its answers file."""
    from finetuner import finished

    overrides = parse_overrides(args.set)
    if args.benchmark_only:
        finished.benchmark(args.benchmark_only, overrides, args.show_samples)
    elif args.upload_only:
        finished.upload(args.upload_only, overrides)
    else:
        finished.chat(args.chat, overrides, args.compare, args.verbose)
    return 0


def main(argv: list[str] | None = None) -> int:
    noise.hide_handled_interrupts()
    args = parse_args(argv)
    ui.forbid_prompts(args.yes)  # --yes: nothing is asked, ever
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
