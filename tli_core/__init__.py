"""TLI Studio core: Targeted Lexical Injection (arXiv 2506.15415) without any UI.

Layer numbering, used everywhere (UI, CSV, CLI): layer 0 is the input embeddings,
layer k (1 <= k < L) is the output of decoder block k (blocks counted from 1), and
layer L is the output of the last block after the final norm -- exactly the indices of
Hugging Face's ``hidden_states`` tuple.
"""

from .errors import TLIError

__all__ = ["TLIError", "__version__"]
__version__ = "0.1.0"
