"""Token sources: where training and the experiments draw their sequences from.

* :mod:`tvvar.sources.base` — the interface every source exposes (``vocab_size``, ``batch``, ``sample_batch``,
  ``info``), the train/validation splits, and :data:`SOURCES`, the registry of sources by ``kind``;
* :mod:`tvvar.sources.synthetic` — sources with exact probabilities: the TV-VAR of Eq. 44 itself
  (``"synthetic-tvvar"``), an order-k Markov chain (``"markov"``), a hidden Markov model (``"hmm"``);
* :mod:`tvvar.sources.prompted` — the prompted source of Section III (``"prompted"``): a topic drawn with its
  prompt, the continuation a chain of that topic;
* :mod:`tvvar.sources.alignment` — data generated through a latent position (``"latent-alignment"``, Deng et al.):
  the source of Theorems 6–7 whose exact marginal and posterior over the alignment are known;
* :mod:`tvvar.sources.text` — a text file read as characters or bytes (:class:`TextCorpus`, :class:`Vocab`).

Every synthetic batch carries ``"entropy"``, the exact conditional entropy of each target in nats. A source is
made by name or path with :func:`make_source` and rebuilt from a saved run's ``info()`` with
:func:`source_from_info`; a user's source class joins them with :func:`register_source` (or by declaring it in
the ``tvvar-sources`` entry-point group).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tvvar.sources.alignment import LatentAlignmentSource
from tvvar.sources.base import CORPUS_KIND, SOURCES, SPLITS, DataSource, entropy_of_logits, register_source
from tvvar.sources.prompted import PromptedSource
from tvvar.sources.synthetic import HiddenMarkovSource, MarkovSource, TVVARSource
from tvvar.sources.text import TextCorpus, Vocab

__all__ = [
    "DataSource",
    "TVVARSource",
    "MarkovSource",
    "HiddenMarkovSource",
    "PromptedSource",
    "LatentAlignmentSource",
    "TextCorpus",
    "Vocab",
    "entropy_of_logits",
    "make_source",
    "source_from_info",
    "register_source",
    "SOURCES",
    "SPLITS",
    "CORPUS_KIND",
]


def make_source(spec: str, **options: Any) -> DataSource:
    """A source by name (``"synthetic-tvvar"``, ``"markov"``, ``"hmm"``) or a path to a text file."""
    if not isinstance(spec, (str, Path)):
        raise TypeError(f"spec must be a source name or a file path, got {type(spec).__name__}")
    if isinstance(spec, str) and spec in SOURCES:
        return SOURCES[spec](**options)
    if not Path(spec).exists():
        raise FileNotFoundError(f"data source {str(spec)!r} is neither a source name ({', '.join(SOURCES.names())}) "
                                "nor an existing file: corpus file does not exist")
    return TextCorpus(spec, **options)


def source_from_info(info: dict[str, Any]) -> DataSource | Vocab:
    """Rebuild a synthetic source from its ``info()``; for a corpus, the file if it is still there,
    otherwise its :class:`Vocab` (enough to encode prompts and decode generations)."""
    kind = info.get("kind") if isinstance(info, dict) else None
    if kind == CORPUS_KIND:
        return TextCorpus.from_info(info)
    if not isinstance(kind, str) or kind not in SOURCES:
        raise ValueError(f"unknown data source kind {kind!r} in saved info; "
                         f"expected one of {', '.join(sorted((*SOURCES.names(), CORPUS_KIND)))}")
    return SOURCES[kind].from_info(info)
