"""TLI Studio core: Targeted Lexical Injection (arXiv 2506.15415) without any UI.

Layer numbering, used everywhere (UI, CSV, CLI): layer 0 is the input embeddings,
layer k (1 <= k < L) is the output of decoder block k (blocks counted from 1), and
layer L is the output of the last block after the final norm -- exactly the indices of
Hugging Face's ``hidden_states`` tuple.
"""

import logging

from .errors import TLIError

# bitsandbytes on an AVX512-BF16 CPU tries to fetch an optional fused kernel from the hub and warns on every
# start when it cannot (it falls back to its own CPU kernel, with the same results): not the user's concern.
logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(lambda record: "kernels-community" not in str(record.msg))

__all__ = ["TLIError", "__version__"]
__version__ = "0.1.0"
