"""tvvar: every autoregressive language model is a time-varying vector autoregression.

Bo Bai, "Forget BIT, It is All about TOKEN: Towards Semantic Information Theory for LLMs",
arXiv:2511.01202, Section V.  See README.md and docs/design.md for the index convention and contracts.

This package module is the top of the import graph: it imports the modules that define the built-in members
of the registries (:mod:`tvvar.registry`: decompositions, sources, objectives, Ψ layers), so that
``import tvvar`` — which any ``import tvvar.<module>`` runs first — registers every one of them, and no module
below has to name a module above it.
"""

# the built-in members of the registries register themselves on import (each module imports only modules below it)
import tvvar.decompositions  # noqa: F401  decompositions of A_tj (Theorem 5, Eq. 78)
import tvvar.diffusion  # noqa: F401  objective llada (Eq. 79)
import tvvar.sources  # noqa: F401  the sources: synthetic, prompted (Section III), latent-alignment, text
import tvvar.theory.information.directed  # noqa: F401  objective semantic_rd (Eq. 18)
import tvvar.theory.transformer.elbo  # noqa: F401  objectives soft / marginal / marginal_attention / elbo
import tvvar.theory.transformer.hopfield  # noqa: F401  Ψ layer hopfield (V-E)
from tvvar.core import Mixer, argsoftmax, available, build, mix_dense, register

__version__ = "0.1.0"
__all__ = ["Mixer", "argsoftmax", "available", "build", "mix_dense", "register", "__version__"]
