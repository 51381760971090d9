"""Models: loading by name, the precision policy, quantised weights, students derived from a teacher,
and the tokenizer check between teacher and student.

Each name below lives in one submodule; this package's namespace is their common interface, so a
caller writes `models.load_model(...)` without knowing which concept holds it. Importing it loads
torch and transformers: callers import it inside the functions that need a model.
"""

from finetuner.models.loading import (LOCAL_HINT, cache_root, count_parameters, load_config, load_model,
                                      load_teacher, load_tokenizer, resolve_model_path)
from finetuner.models.precision import (CPU_DTYPE_ENV, Precision, cpu_bf16_speedup, cpu_precision_reason,
                                        cpu_uses_bf16, precision_policy)
from finetuner.models.students import (ModelInfo, block_drop_candidates, check_student_plan, choose_student_layers,
                                       derive_student, layer_info, parameter_count, student_config,
                                       student_layer_indices)
from finetuner.models.tokenizers import check_tokenizers_match

__all__ = ["LOCAL_HINT", "cache_root", "count_parameters", "load_config", "load_model", "load_teacher",
           "load_tokenizer", "resolve_model_path", "CPU_DTYPE_ENV", "Precision", "cpu_bf16_speedup",
           "cpu_precision_reason", "cpu_uses_bf16", "precision_policy", "ModelInfo", "block_drop_candidates",
           "check_student_plan", "choose_student_layers", "derive_student", "layer_info", "parameter_count", "student_config",
           "student_layer_indices", "check_tokenizers_match"]
