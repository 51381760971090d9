"""Objectives: what the student learns from beyond `finetuner.losses` (the pure token-level loss).

One module per objective: the divergence on cached top-k teacher entries, on-policy
distillation (the student writes, the teacher grades), hidden-state matching.
"""

from __future__ import annotations


def trainer_settings(cfg, student, teacher, tokenizer, kept_layers: list[int] | None) -> dict:
    """DistillationTrainer's objective arguments for a RunConfig: the hidden-state term (with its
    layer map and projection) and the on-policy sampler, each only when switched on. (The divergence
    belongs to the teacher's signal: `finetuner.teachers.signal`.)"""
    settings = {}
    if cfg.hidden_state_weight > 0:
        from finetuner.objectives import hidden_states

        settings["hidden"] = hidden_states.build(cfg.hidden_state_layers, cfg.hidden_state_loss, student, teacher,
                                                 kept_layers)
        settings["hidden_weight"] = cfg.hidden_state_weight
    if cfg.on_policy_fraction > 0:
        from finetuner.objectives.on_policy import OnPolicySampler

        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        settings["on_policy"] = OnPolicySampler(cfg.on_policy_fraction, cfg.on_policy_temperature,
                                                cfg.on_policy_max_new_tokens, cfg.max_length,
                                                tokenizer.eos_token_id, pad, seed=cfg.seed)
    return settings
