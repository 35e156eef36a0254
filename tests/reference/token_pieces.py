"""Token ids from generated tokens' texts (the OpenAI logprobs' `tokens`), for byte-level BPE
tokenizers (GPT-2's byte-to-character map, as SmolLM2's): a client that continues a
conversation with exactly the tokens a model generated, which a random-weight model's text
re-tokenized is not."""


def _byte_chars():
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return {b: chr(b if b in printable else next(extra)) for b in range(256)}


_CHARS = _byte_chars()


def ids_of_pieces(tokenizer, pieces):
    """The ids of `pieces` in `tokenizer` (a `tokenizers.Tokenizer`); None where a piece is not
    a whole token's text (a partial UTF-8 character)."""
    return [tokenizer.token_to_id("".join(_CHARS[b] for b in p.encode())) for p in pieces]
