"""Checks a converted model's tokenizer files against transformers' GGUF tokenizer.

usage: gguf_check_tokenizer.py MODEL.gguf CONVERTED_DIR
"""
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from gguf_reference import reference_tokenizer  # noqa: E402

from tokenizers import Tokenizer  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

CORPUS = [
    "Hello, world!",
    "What is the capital of France?",
    "  leading spaces and trailing   ",
    "tabs\tand\nnewlines\r\n\n\nand  multiple    spaces",
    "Numbers: 0 7 42 123 2024 3.14159 -17 1,000,000 0x1F",
    "I'm sure you'll see they've done it; we'd've LOVED IT'S",
    "Ünïcödé: naïve café, Straße, Ελληνικά, русский язык, עברית, العربية",
    "中文测试：你好，世界！日本語のテキスト。한국어 텍스트",
    "Emoji: 😀🎉👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "fn main() { let x: Vec<u8> = vec![1, 2, 3]; println!(\"{x:?}\"); }",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>text after end<|im_end|><|im_start|>",
    "mixed<|im_start|>in the middle<repo_name>x<file_sep>",
    "\u00a0non-breaking\u2009thin\u200bzero-width",
    "",
    " ",
    "a" * 300,
    "URL https://example.com/path?q=1&r=two#frag and email a.b@c.org",
]


def main():
    gguf_path, out_dir = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    reference, reference_config = reference_tokenizer(gguf_path)
    ours_raw = Tokenizer.from_file(str(out_dir / "tokenizer.json"))
    ours = AutoTokenizer.from_pretrained(str(out_dir))

    for text in CORPUS:
        expected = reference(text, add_special_tokens=False)["input_ids"]
        got_raw = ours_raw.encode(text, add_special_tokens=False).ids
        got = ours(text, add_special_tokens=False)["input_ids"]
        assert got_raw == expected, f"tokenizers ids differ for {text!r}:\n{got_raw}\n{expected}"
        assert got == expected, f"transformers ids differ for {text!r}:\n{got}\n{expected}"
        with_special = reference(text)["input_ids"]
        assert ours(text)["input_ids"] == with_special, f"special-token ids differ for {text!r}"
        for skip in (False, True):
            want = reference.decode(expected, skip_special_tokens=skip)
            assert ours_raw.decode(got_raw, skip_special_tokens=skip) == want, f"decode differs for {text!r}"
            assert ours.decode(got, skip_special_tokens=skip) == want, f"decode differs for {text!r}"

    # Every single token decodes the same (covers the byte alphabet and added tokens).
    for token_id in range(reference.backend_tokenizer.get_vocab_size()):
        assert ours_raw.decode([token_id], skip_special_tokens=False) == reference.decode(
            [token_id], skip_special_tokens=False
        ), f"token {token_id} decodes differently"

    config = json.loads((out_dir / "tokenizer_config.json").read_text())
    for key in ("bos_token", "eos_token", "unk_token", "pad_token", "add_bos_token", "chat_template"):
        assert config.get(key) == reference_config.get(key), f"tokenizer_config {key}: {config.get(key)!r} != {reference_config.get(key)!r}"

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    expected = reference.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    got = ours.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert got == expected, f"chat template differs:\n{got!r}\n{expected!r}"
    assert ours(got, add_special_tokens=False)["input_ids"] == reference(expected, add_special_tokens=False)["input_ids"]

    generation = json.loads((out_dir / "generation_config.json").read_text())
    assert generation["eos_token_id"] == reference.convert_tokens_to_ids(reference_config["eos_token"])
    print(f"tokenizer: {len(CORPUS)} texts and {reference.backend_tokenizer.get_vocab_size()} single tokens match transformers")


if __name__ == "__main__":
    main()
