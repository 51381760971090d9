"""finetuner: a guided wizard for fine-tuning and distilling causal language models."""

import logging

__version__ = "2.1.0"


class _DropMessages(logging.Filter):
    """Drops log records whose format string starts with one of `prefixes`."""

    def __init__(self, *prefixes: str):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


# bitsandbytes logs an optional-accelerator miss at import time, and one line per 8-bit matmul
# in eval mode; neither is an error. The filters must exist before anything imports
# bitsandbytes (transformers' Trainer and peft do), hence here. Everything else still gets through.
logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(
    _DropMessages("Failed to load CPU gemm_4bit_forward from kernels-community"))
logging.getLogger("bitsandbytes.autograd._functions").addFilter(
    _DropMessages("MatMul8bitLt: inputs will be cast from"))
