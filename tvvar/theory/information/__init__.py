"""Section III of Bai (arXiv:2511.01202): directed information, the semantic information flow, Doob and Freedman, Eq.
18's rate–distortion, capacity with a reward constraint. Every public name of its modules is importable from this
package too."""

from tvvar.theory.information import capacity as _capacity
from tvvar.theory.information import directed as _directed
from tvvar.theory.information.capacity import *  # noqa: F403
from tvvar.theory.information.directed import *  # noqa: F403

__all__ = sorted({name for module in (_capacity, _directed)
                  for name in module.__all__})
