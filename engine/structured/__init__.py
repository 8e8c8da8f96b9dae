"""Grammar-constrained decoding (structured outputs, enforced tool calls) on llguidance.

``schema_limits`` checks a JSON schema before compilation; ``grammar`` turns a
:class:`~shoal.engine.sampling_params.StructuredOutput` into llguidance grammar text;
``compiler`` compiles and caches grammars and hands one matcher per sequence;
``masks`` turns the matchers of a batch into a logits mask before sampling.
"""

from shoal.engine.structured.compiler import GrammarCompiler, advance
from shoal.engine.structured.errors import GrammarError
from shoal.engine.structured.grammar import grammar_text
from shoal.engine.structured.masks import GrammarMasks

__all__ = ["GrammarCompiler", "GrammarError", "GrammarMasks", "advance", "grammar_text"]
