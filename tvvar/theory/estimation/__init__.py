"""Sections II, V-F and V-G: Gaussian (log-det) and plug-in estimators, Granger tests, the DV / NWJ / InfoNCE bounds,
exact categorical DI, kernel TV-VAR estimation, coefficient recovery. Every public name of its modules is importable
from this package too."""

from tvvar.theory.estimation import categorical as _categorical
from tvvar.theory.estimation import classical as _classical
from tvvar.theory.estimation import granger as _granger
from tvvar.theory.estimation import kernel_tvvar as _kernel_tvvar
from tvvar.theory.estimation import neural as _neural
from tvvar.theory.estimation import recovery as _recovery
from tvvar.theory.estimation.categorical import *  # noqa: F403
from tvvar.theory.estimation.classical import *  # noqa: F403
from tvvar.theory.estimation.granger import *  # noqa: F403
from tvvar.theory.estimation.kernel_tvvar import *  # noqa: F403
from tvvar.theory.estimation.neural import *  # noqa: F403
from tvvar.theory.estimation.recovery import *  # noqa: F403

__all__ = sorted({name for module in (_categorical, _classical, _granger, _kernel_tvvar, _neural, _recovery)
                  for name in module.__all__})
