"""How long each phase of a run will take, worked out before "Start?": preparing the models, the
teacher writing responses, filling the teacher cache, training, the SFT baseline and the benchmark,
and their total (what follows "Start?"; the checks and the probe have already run).

Every phase is counted work over a rate. Training and forward passes: FLOPs counted the way
`Recipe.training_flops` counts them, over the rate a probe step measured on this machine (probe.py).
Decoding (a local teacher writing, the benchmark's answers, the draft): decoding steps x the time of
one step at that many rows (between the probe's one-row and batch timings), measured on the trained
model and scaled by parameters for the others (on a CPU a decoding step
reads every weight once: the 134.5M built-in teacher decoded at 1.65x the time of its 81.4M
student, for 1.65x the parameters). Where no probe runs, rates calibrated on one 2-core CPU stand in,
and the plan says which.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass

from finetuner.config import RunConfig, applies
from finetuner.recipe import Recipe

# Effective training FLOP/s per CPU thread (bf16 autocast), from finetuner's DistillationTrainer in
# benchmarks/results/distill_speed-2026-11-24.json: 3.775 s a step of 8 GSM8K rows (about 1,000
# answer and 550 prompt tokens) on 2 idle cores, SmolLM2-135M teaching its 15-layer student:
# about 1.05 TFLOP a step by the count in `training_flops`, so 278 GFLOP/s, 139 per thread.
CPU_FLOPS_PER_CORE = 139e9
CALIBRATION = "calibrated on another 2-core CPU, not measured here"
# One fp32 decoding step per parameter: the built-in teacher (134.5M) decoded 38.5 tokens/s at 8 rows, 12.6 at one (README).
DECODE_ROWS, DECODE_SECONDS_PER_PARAM, DECODE_ONE_SECONDS_PER_PARAM = 8, 8 / 38.5 / 134.5e6, 1 / 12.6 / 134.5e6
# The built-in's first use dequantises its GGUF and saves it: about 20 s for 135M parameters.
CONVERT_SECONDS_PER_PARAM = 20 / 134.5e6
LOAD_BYTES_PER_SECOND = 1e9  # reading fp32 safetensors from a local disk, with their page-cache copy
SPREAD_NOTE = 1.5  # the slowest probe timing over the fastest, above which the plan says so


@dataclass(frozen=True)
class Phase:
    name: str
    seconds: float | None  # None: not estimated (the plan says why in `how`)
    how: str = ""


@dataclass(frozen=True)
class Rates:
    flops_per_second: float | None
    optimizer_seconds: float
    decode_seconds_per_param: float | None  # one decoding step of `decode_rows` rows, per parameter of the model
    how: str
    notes: tuple[str, ...] = ()
    decode_rows: int = 1  # and decode_one_seconds_per_param: the same for a single row
    decode_one_seconds_per_param: float | None = None

    def decode_seconds(self, params: float, rows: int) -> float:
        """One decoding step of `rows` rows: linear between the one-row and the batch timings (a
        step reads every weight once, then each row adds its compute)."""
        batch = self.decode_seconds_per_param * params
        if self.decode_one_seconds_per_param is None or self.decode_rows <= 1:
            return batch
        one = self.decode_one_seconds_per_param * params
        return max(one + (batch - one) * (rows - 1) / (self.decode_rows - 1), 0.0)


@dataclass(frozen=True)
class TimeEstimate:
    phases: tuple[Phase, ...]
    how: str  # how the rates were found, for the plan
    notes: tuple[str, ...] = ()

    def phase(self, name: str) -> Phase | None:
        return next((p for p in self.phases if p.name == name), None)

    @property
    def seconds(self) -> float | None:
        """The optimizer steps alone (what the final panel sets beside the measured training time)."""
        training = self.phase("training")
        return training.seconds if training else None

    @property
    def total(self) -> float | None:
        known = [p.seconds for p in self.phases if p.seconds is not None]
        return sum(known) if known else None

    def as_dict(self) -> dict:
        return {"phases": {p.name: None if p.seconds is None else round(p.seconds, 1) for p in self.phases},
                "total_s": None if self.total is None else round(self.total, 1), "how": self.how}


def estimate(cfg: RunConfig, pre, rates: Rates) -> TimeEstimate:
    """Every phase of the run, from the preflight's data and the rates."""
    recipe, data = pre.recipe, pre.data
    if data is None:  # the teacher writes the rows from documents after "Start?"
        return TimeEstimate((preparation(cfg, recipe, None, rates),
                             Phase("training", None, "not estimated: the teacher writes the rows after \"Start?\"")),
                            rates.how, rates.notes)
    if not data.stats.get("train_rows"):
        return TimeEstimate((Phase("training", 0.0, "no rows to train on"),), rates.how, rates.notes)
    phases = [preparation(cfg, recipe, data, rates), generation(cfg, pre, rates), cache_build(recipe, data, rates),
              Phase("training", training_seconds(_training_recipe(recipe), data, rates), rates.how),
              baseline(cfg, recipe, data, rates), benchmark(cfg, recipe, data, rates)]
    return TimeEstimate(tuple(p for p in phases if p is not None), rates.how, rates.notes)


def _training_recipe(recipe: Recipe) -> Recipe:
    """A cache built first is read while training: the teacher's forward is the cache phase's."""
    return dataclasses.replace(recipe, cache_complete=True) if recipe.signal == "cache" else recipe


def training_seconds(recipe: Recipe, data, rates: Rates) -> float | None:
    if rates.flops_per_second is None:
        return None
    stats = data.stats
    total_steps = recipe.steps(stats["train_rows"])
    epochs_run = total_steps / recipe.steps_per_epoch(stats["train_rows"])
    tokens = sum(len(ids) for ids in data.train["input_ids"]) * epochs_run
    label_tokens = stats["train_label_tokens"] * epochs_run
    return recipe.training_flops(tokens, label_tokens) / rates.flops_per_second + total_steps * rates.optimizer_seconds


# ---- the phases around training -----------------------------------------------------------------

def _params(name: str, layers: int | None = None) -> int:
    from finetuner import models

    return models.parameter_count(name, layers)


def _params_if_here(name: str) -> int | None:
    """Parameters of a model that may not be on this machine (a teacher its complete cache stands in for)."""
    from finetuner.ui import UserError

    try:
        return _params(name)
    except (UserError, OSError, ValueError):
        return None


def preparation(cfg: RunConfig, recipe: Recipe, data, rates: Rates) -> Phase:
    """Built-ins converted on first use, weights read, and a derived student's layers chosen by loss."""
    from finetuner import sources
    from finetuner.models.loading import builtin_converted

    local_teacher = recipe.runs_teacher or (recipe.writes and not cfg.teacher_api_base)
    loaded = [recipe.trained] + ([recipe.teacher] if local_teacher else [])
    loaded = [name for name in dict.fromkeys(loaded) if name]
    what, seconds = [], 0.0
    fresh = [n for n in loaded if sources.model_kind(n) == "builtin" and not builtin_converted(n)]
    if fresh:
        seconds += sum(_params(n) for n in fresh) * CONVERT_SECONDS_PER_PARAM
        what.append("converting the built-in (first use)")
    seconds += sum(_params(n) * 4 for n in loaded) / LOAD_BYTES_PER_SECOND
    what.append("loading")
    if recipe.derived_layers and data is not None and rates.flops_per_second:
        from finetuner.models import block_drop_candidates
        from finetuner.sources import layer_count
        from finetuner.training.student import CALIBRATION_ROWS

        candidates = len(block_drop_candidates(layer_count(recipe.trained) or recipe.derived_layers,
                                               recipe.derived_layers))
        tokens = sum(len(ids) for ids in data.train[:CALIBRATION_ROWS]["input_ids"])
        seconds += candidates * 2 * _params(recipe.trained, recipe.derived_layers) * tokens / rates.flops_per_second
        what.append(f"choosing the student's layers ({candidates} candidates)")
    return Phase("model preparation", seconds, ", ".join(what))


def generation(cfg: RunConfig, pre, rates: Rates) -> Phase | None:
    """The teacher writes a response to every prompt (training and held out) not already cached."""
    from finetuner.teachers.estimate import needed

    if not pre.recipe.writes:
        return None
    need = needed(cfg, pre)
    prompts = need.requests - need.cached
    if not prompts:
        return Phase("teacher generation", 0.0, "none: every response is cached")
    if cfg.teacher_api_base:
        return api_generation(cfg, prompts)
    if rates.decode_seconds_per_param is None:
        return Phase("teacher generation", None, "not estimated: no decoding rate here")
    steps = math.ceil(prompts / cfg.generation_batch_size) * cfg.generation_max_new_tokens
    seconds = steps * rates.decode_seconds(_params(cfg.teacher), min(prompts, cfg.generation_batch_size))
    return Phase("teacher generation", seconds, f"{prompts} responses of up to {cfg.generation_max_new_tokens} "
                                                f"tokens, {cfg.generation_batch_size} at a time")


def api_generation(cfg: RunConfig, prompts: int) -> Phase:
    """An API teacher's time is the endpoint's: the rate an earlier run with it measured, else projected
    live from its first replies."""
    from finetuner.teachers.estimate import earlier_rate

    rate = earlier_rate(cfg)
    if rate is None:
        return Phase("teacher generation", None, f"{prompts} responses from {cfg.teacher_api_base}: projected live "
                                                 "from the first replies (no earlier run with this teacher here)")
    return Phase("teacher generation", prompts / rate["requests_per_s"],
                 f"{prompts} responses at {rate['requests_per_s']:.2f} requests/s, measured by an earlier run")


def cache_build(recipe: Recipe, data, rates: Rates) -> Phase | None:
    """An incomplete teacher cache is filled first: one teacher forward over the training rows."""
    if recipe.signal != "cache" or recipe.cache_complete:
        return None
    if rates.flops_per_second is None:
        return Phase("teacher cache", None, "not estimated")
    tokens = sum(len(ids) for ids in data.train["input_ids"])
    seconds = 2 * _params(recipe.teacher) * tokens / rates.flops_per_second
    return Phase("teacher cache", seconds, f"the teacher's forward over {tokens:,} tokens, once")


def baseline(cfg: RunConfig, recipe: Recipe, data, rates: Rates) -> Phase | None:
    if not (recipe.distils and cfg.sft_baseline):
        return None
    from finetuner.baseline import baseline_config

    return Phase("SFT baseline", training_seconds(Recipe.of(baseline_config(cfg)), data, rates),
                 "the same steps, plain fine-tuning")


def benchmark(cfg: RunConfig, recipe: Recipe, data, rates: Rates) -> Phase | None:
    """Each model compared answers every benchmarked prompt, max_new_tokens steps a batch, and its
    decoding speed is measured on one more batch; a forward over the references gives perplexity."""
    from finetuner.benchmark import speculative, speed
    from finetuner.benchmark.cost import SPEED_BATCH, SPEED_TOKENS
    from finetuner.benchmark.measure import ANSWER_BATCH

    if not (cfg.benchmark and applies("benchmark", cfg)) or data.format.kind == "text":
        return None
    prompts = min(cfg.benchmark_samples, data.stats["eval_rows"])
    if not prompts:
        return None
    if rates.decode_seconds_per_param is None or rates.flops_per_second is None:
        return Phase("benchmark", None, "not estimated: no decoding rate here")
    trained = _params(recipe.trained, recipe.derived_layers)
    compared = [trained, trained]  # base and fine-tuned; student before and after
    if recipe.distils and not cfg.teacher_api_base and (teacher := _params_if_here(recipe.teacher)):
        compared.append(teacher)
    if recipe.distils and cfg.sft_baseline:
        compared.append(trained)
    answer_steps = math.ceil(prompts / ANSWER_BATCH) * cfg.max_new_tokens + 2
    speed_steps = speed.REPEATS * min(cfg.max_new_tokens, SPEED_TOKENS)  # best of alternate timings
    reference_tokens = prompts * cfg.max_length / 2
    seconds = sum(answer_steps * rates.decode_seconds(params, min(prompts, ANSWER_BATCH))
                  + speed_steps * rates.decode_seconds(params, SPEED_BATCH)
                  + 2 * params * reference_tokens / rates.flops_per_second + params * 4 / LOAD_BYTES_PER_SECOND
                  for params in compared)
    if len(compared) > 2 and _drafts(cfg, recipe):  # the teacher alone, then with the student drafting
        draft_steps = speculative.PROMPTS * speculative.REPEATS * min(cfg.max_new_tokens, speculative.MAX_NEW_TOKENS)
        seconds += draft_steps * (2 * rates.decode_seconds(compared[2], 1) + rates.decode_seconds(trained, 1))
    return Phase("benchmark", seconds, f"{len(compared)} models x {prompts} answers x up to "
                                       f"{cfg.max_new_tokens} tokens")


def _drafts(cfg: RunConfig, recipe: Recipe) -> bool:
    """The speculative benchmark will run (its own rule): the teacher's weights are here, and the tokenizers
    are surely shared when the student is derived from its teacher or learns from its logits."""
    from finetuner.benchmark import speculative
    same = recipe.trained == recipe.teacher or cfg.distillation_mode != "responses"
    return speculative.when(cfg.speculative_benchmark, True, same) is None


# ---- the rates --------------------------------------------------------------------------------

def calibrated(why: str) -> Rates:
    """Rates from the calibration machine, where no probe runs (None on a GPU: nothing calibrated)."""
    import torch

    if torch.cuda.is_available():
        return Rates(None, 0.0, None, f"not estimated: {why}")
    rate = CPU_FLOPS_PER_CORE * torch.get_num_threads()
    return Rates(rate, 0.0, DECODE_SECONDS_PER_PARAM, f"{CALIBRATION} ({why}){busy_note()}",
                 decode_rows=DECODE_ROWS, decode_one_seconds_per_param=DECODE_ONE_SECONDS_PER_PARAM)


def measured_rates(measured, trained_params: int, on_policy_note: str = "") -> Rates:
    """Rates from a probe (`probe.Measured`); a note when its timings disagreed widely."""
    if measured.decode_step_seconds:
        decode, rows = measured.decode_step_seconds / trained_params, measured.decode_rows
        one = measured.decode_one_seconds / trained_params if measured.decode_one_seconds else None
    else:
        decode, rows, one = DECODE_SECONDS_PER_PARAM, DECODE_ROWS, DECODE_ONE_SECONDS_PER_PARAM
    notes = ()
    if measured.spread > SPREAD_NOTE:
        notes = (f"the probe's timings varied {measured.spread:.1f}x (another process may be using the machine); "
                 "the estimate takes the fastest, so expect longer while the machine stays busy",)
    how = f"measured: a probe step here ran {measured.flops_per_second / 1e9:.0f} GFLOP/s{on_policy_note}"
    return Rates(measured.flops_per_second, measured.optimizer_seconds, decode, how, notes, rows, one)


def busy_note() -> str:
    """The calibration is for idle cores; other processes competing for them slow training down."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        return ""
    cores = os.cpu_count() or 1
    if load <= cores * 1.25:
        return ""
    return f"; the machine is busy now (load {load:.1f} on {cores} cores), so expect it to take longer"
