"""Section V: the Transformer as a TV-VAR — the ELBO (Theorems 6–7), Rademacher complexity (Theorem 8), Hopfield
networks (V-E). Every public name of its modules is importable from this package too."""

from tvvar.theory.transformer import elbo as _elbo
from tvvar.theory.transformer import hopfield as _hopfield
from tvvar.theory.transformer import hopfield_modern as _hopfield_modern
from tvvar.theory.transformer import rademacher as _rademacher
from tvvar.theory.transformer.elbo import *  # noqa: F403
from tvvar.theory.transformer.hopfield import *  # noqa: F403
from tvvar.theory.transformer.hopfield_modern import *  # noqa: F403
from tvvar.theory.transformer.rademacher import *  # noqa: F403

__all__ = sorted({name for module in (_elbo, _hopfield, _hopfield_modern, _rademacher)
                  for name in module.__all__})
