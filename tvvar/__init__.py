"""tvvar: every autoregressive language model is a time-varying vector autoregression.

Bo Bai, "Forget BIT, It is All about TOKEN: Towards Semantic Information Theory for LLMs",
arXiv:2511.01202, Section V.  See README.md and DESIGN.md for the index convention and contracts.
"""

from tvvar.core import Mixer, argsoftmax, available, build, mix_dense, register

__version__ = "0.1.0"
__all__ = ["Mixer", "argsoftmax", "available", "build", "mix_dense", "register", "__version__"]
