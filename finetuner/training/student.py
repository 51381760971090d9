"""The model that trains: loaded, derived from the teacher's layers, or quantised; then adapted."""

from __future__ import annotations

from pathlib import Path

from finetuner import adapters, artifacts, distributed, models, ui
from finetuner.recipe import Recipe

CALIBRATION_ROWS = 8  # training rows that pick a derived student's layers


def build(recipe: Recipe, train_rows, collate, out: Path, kept_layers: list[int] | None = None):
    """The trained model's weights (loaded as they are, quantised, or derived from the teacher's
    layers), and a derived student's kept layers (None otherwise)."""
    if recipe.quantization:
        ui.step(f"Loading {recipe.trained} ({recipe.quantization})")
        return models.load_model(recipe.trained, quantization=recipe.quantization), None
    if recipe.derived_layers is None:
        ui.step(f"Loading {recipe.trained}")
        return models.load_model(recipe.trained), None
    return derive(recipe.trained, recipe.derived_layers, train_rows, collate, out, kept_layers)


def adapt(model, recipe: Recipe, adapter_settings, total_steps: int):
    """Wrap `model` in the recipe's adapter (if any) and report what trains. `adapter_settings`: what
    peft's configs read (lora_r, lora_alpha, lora_dropout, adalora_init_r, adalora_target_r)."""
    if recipe.adapter is not None:
        model = adapters.apply_adapter(adapter_settings, model, recipe.adapter, recipe.quantization is not None,
                                       total_steps)
    trainable = models.count_parameters(model, trainable_only=True)
    total = models.count_parameters(model)
    ui.info(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / max(total, 1):.2f}%)")
    return model


def derive(name: str, layers: int, train_rows, collate, out: Path, kept_layers: list[int] | None):
    """(model, kept): a student keeping `layers` of `name`'s decoder layers: `kept_layers` when another run already
    chose them (the SFT baseline), else the best block-drop on a few training rows."""
    ui.step(f"Deriving the student: {layers} layers of {name}")
    base = models.load_model(name)
    if kept_layers is not None:
        ui.info(f"keeping layers {kept_layers}, as the distilled student did")
        artifacts.write_json(out / artifacts.STUDENT_LAYERS_FILE,
                             {"kept": kept_layers, "of": base.config.num_hidden_layers})
        return models.derive_student(base, layers, kept_layers), kept_layers
    rows = train_rows.select(range(min(CALIBRATION_ROWS, len(train_rows))))
    batch = collate(list(rows))
    kept, loss = models.choose_student_layers(base, layers, dict(batch))
    ui.info(f"keeping layers {kept}: of the students that drop one block of layers, the lowest loss "
            f"({loss:.3f}) on {len(rows)} training rows")
    if distributed.is_main_process():  # every rank computes the same choice from the same rows
        artifacts.write_json(out / artifacts.STUDENT_LAYERS_FILE,
                             {"kept": kept, "of": base.config.num_hidden_layers, "calibration_loss": loss})
    return models.derive_student(base, layers, kept), kept
