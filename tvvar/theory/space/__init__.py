"""Section IV: the semantic space and its Gromov–Wasserstein distance, compression (JL, Theorem 4, Eq. 39), CPC and Eq.
42's chain. Every public name of its modules is importable from this package too."""

from tvvar.theory.space import compression as _compression
from tvvar.theory.space import cpc as _cpc
from tvvar.theory.space import semantic as _semantic
from tvvar.theory.space.compression import *  # noqa: F403
from tvvar.theory.space.cpc import *  # noqa: F403
from tvvar.theory.space.semantic import *  # noqa: F403

__all__ = sorted({name for module in (_compression, _cpc, _semantic)
                  for name in module.__all__})
