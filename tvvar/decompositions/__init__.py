"""Built-in decompositions of the TV-VAR coefficients A_tj; importing this package registers them.

| name                 | class                | paper                |
|----------------------|----------------------|----------------------|
| "attention"          | Attention            | Theorem 5 (factorized W_q, W_k, W_v, W_o) |
| "bilinear_attention" | BilinearAttention    | Theorem 5 (B, A directly) |
| "dense"              | DenseTVVAR           | Definition 13        |

A new decomposition is one file with one ``@register("name")`` class; import it here to make it
built-in, or import it yourself before calling ``tvvar.core.build``.
"""

from tvvar.decompositions.attention import Attention, BilinearAttention, SoftmaxBilinearAttention
from tvvar.decompositions.dense import DenseTVVAR

__all__ = ["Attention", "BilinearAttention", "SoftmaxBilinearAttention", "DenseTVVAR"]
