"""Loads a converted GGUF folder with mlx-lm and asks it a question with greedy decoding.

usage: gguf_check_mlx_lm.py CONVERTED_DIR
"""
import sys

import mlx.core as mx
from mlx_lm import generate, load

QUESTION = "What is the capital of France?"
EXPECTED = "The capital of France is Paris."


def main():
    mx.set_default_device(mx.cpu)
    model, tokenizer = load(sys.argv[1])
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTION}], add_generation_prompt=True, tokenize=False
    )
    # generate() defaults to greedy sampling; the answer is about 8 tokens.
    answer = generate(model, tokenizer, prompt=prompt, max_tokens=16, verbose=False)
    print(f"mlx-lm answer: {answer!r}")
    assert answer.strip().startswith(EXPECTED), f"expected {EXPECTED!r}, got {answer!r}"


if __name__ == "__main__":
    main()
