"""Built-in decompositions of the TV-VAR coefficients A_tj; importing this package registers them.

| name                 | class                | paper                |
|----------------------|----------------------|----------------------|
| "attention"          | Attention            | Theorem 5 (factorized W_q, W_k, W_v, W_o) |
| "bilinear_attention" | BilinearAttention    | Theorem 5 (B, A directly) |
| "dense"              | DenseTVVAR           | Definition 13        |
| "ssm"                | ScalarSSM            | Eq. 78 (Mamba-2 SSD: scalar × identity per head) |
| "ssm_diagonal"       | DiagonalSSM          | Eq. 78 (Mamba-1 / S4D: diagonal A_t) |
| "ssm_lti"            | LTISSM               | Eq. 78 (time-invariant: S4D, linear VAR) |
| "ssm_dense"          | DenseSSM             | Eq. 78 (general dense time-varying A_t) |
| "mamba"              | MambaBlock           | Eq. 78 inside a Mamba-2 block (conv, gates) |
| "mamba1"             | Mamba1Block          | Eq. 78 inside a Mamba-1 block (per-channel A ∈ ℝ^{E×N}) |

A new decomposition is one file with one ``@register("name")`` class; import it here to make it
built-in, or import it yourself before calling ``tvvar.core.build``.
"""

from tvvar.decompositions.attention import Attention, BilinearAttention, SoftmaxBilinearAttention
from tvvar.decompositions.dense import DenseTVVAR
from tvvar.decompositions.ssm import LTISSM, DenseSSM, DiagonalSSM, Mamba1Block, MambaBlock, ScalarSSM

__all__ = ["Attention", "BilinearAttention", "SoftmaxBilinearAttention", "DenseTVVAR"]
__all__ += ["ScalarSSM", "DiagonalSSM", "LTISSM", "DenseSSM", "MambaBlock", "Mamba1Block"]
