"""Shared helpers for the GGUF reference checks.

transformers builds a tokenizer straight from GGUF metadata, but its GGUF package imports
torch at module level even though the tokenizer path never uses it. torch is deliberately
not installed here, so a placeholder module stands in for the import.
"""
import importlib.machinery
import sys
import types


def _install_torch_placeholder():
    if "torch" in sys.modules:
        return

    class _Placeholder(types.ModuleType):
        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return type(name, (), {})

    module = _Placeholder("torch")
    module.__spec__ = importlib.machinery.ModuleSpec("torch", None)
    sys.modules["torch"] = module


def reference_tokenizer(gguf_path):
    """(PreTrainedTokenizerFast, tokenizer_config dict) as transformers builds them from the GGUF."""
    _install_torch_placeholder()
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf.gguf_tokenizer_mapping import (
        convert_gguf_tokenizer,
        get_gguf_tokenizer,
    )

    arch, tokenizer_dict, tokenizer_config = get_gguf_tokenizer(str(gguf_path))
    backend, _ = convert_gguf_tokenizer(arch, tokenizer_dict)
    kwargs = {k: v for k, v in tokenizer_config.items() if v is not None}
    return PreTrainedTokenizerFast(tokenizer_object=backend, **kwargs), tokenizer_config
