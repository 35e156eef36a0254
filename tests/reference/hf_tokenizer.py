"""Reference tokenizer results from Hugging Face transformers, for the Rust parity tests.

Reads one JSON request on stdin:
    {
      "gguf": "path/to/model.gguf",          # tokenizer built from this file
      "save_dir": "dir",                      # where tokenizer.json etc. are written
      "encode": [{"text": str, "add_special_tokens": bool}],
      "decode": [{"ids": [int], "skip_special_tokens": bool}],
      "chat":   [{"template": str | null,     # a Jinja template text; null = the GGUF's own
                  "messages": [...], "tools": [...] | null,
                  "add_generation_prompt": bool, "extra": {...}}]
    }
and prints {"vocab_size": int, "eos_token_id": int, "special_tokens_map": {...},
            "encode": [[ids]], "decode": [str], "chat": [{"text": str, "ids": [int]} | {"error": str}]}.
"""

import json
import os
import sys
import types


def load_gguf_tokenizer(gguf_path):
    import transformers  # noqa: F401  (computes its optional-backend flags before the stub below)
    from transformers import PreTrainedTokenizerFast

    # transformers' GGUF metadata reader imports torch at module level only to name tensor
    # dtypes; reading tokenizer metadata never touches it. The test venv has no torch, so give
    # that import a placeholder module rather than install torch for a tokenizer.
    try:
        import torch  # noqa: F401
    except ImportError:
        stub = types.ModuleType("torch")

        class _Placeholder:
            def __init__(self, *args, **kwargs):
                pass

        stub.__getattr__ = lambda name: _Placeholder
        sys.modules["torch"] = stub

    return PreTrainedTokenizerFast.from_pretrained(
        os.path.dirname(os.path.abspath(gguf_path)), gguf_file=os.path.basename(gguf_path)
    )


def main():
    request = json.load(sys.stdin)
    tokenizer = load_gguf_tokenizer(request["gguf"])
    tokenizer.save_pretrained(request["save_dir"])
    own_template = tokenizer.chat_template

    result = {
        "vocab_size": len(tokenizer),
        "eos_token_id": tokenizer.eos_token_id,
        "special_tokens_map": tokenizer.special_tokens_map,
        "encode": [],
        "decode": [],
        "chat": [],
    }
    for item in request.get("encode", []):
        result["encode"].append(
            tokenizer.encode(item["text"], add_special_tokens=item["add_special_tokens"])
        )
    for item in request.get("decode", []):
        result["decode"].append(
            tokenizer.decode(item["ids"], skip_special_tokens=item["skip_special_tokens"])
        )
    for item in request.get("chat", []):
        template = item.get("template") or own_template
        kwargs = dict(
            tools=item.get("tools"),
            add_generation_prompt=item["add_generation_prompt"],
            chat_template=template,
            **item.get("extra", {}),
        )
        try:
            text = tokenizer.apply_chat_template(item["messages"], tokenize=False, **kwargs)
            ids = tokenizer.apply_chat_template(
                item["messages"], tokenize=True, return_dict=False, **kwargs
            )
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
            result["chat"].append({"text": text, "ids": list(ids)})
        except Exception as err:  # the Rust side must fail on the same inputs
            result["chat"].append({"error": f"{type(err).__name__}: {err}"})

    json.dump(result, sys.stdout, ensure_ascii=False)


if __name__ == "__main__":
    main()
