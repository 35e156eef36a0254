"""Embeddings throughput: the same inputs embedded as one batched request, one request at a
time, and as concurrent single requests (which the engine batches), through the daemon's
`POST /v1/embeddings` with the openai SDK. The model is SmolLM2-135M-Instruct made an
embedding model (its files linked, with sentence-transformers' modules.json and a last-token
pooling config): the architecture and size matter here, not what the vectors mean. mlx-lm has
no embeddings server, so there is no reference column. Writes docs/BENCHMARKS.md (section
"embeddings").

usage: .venv/bin/python bench/embed_bench.py [--model DIR] [--bin PATH] [--inputs N] [--repeats R]
"""
import argparse
import concurrent.futures as cf
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import openai
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from report import write_section  # noqa: E402

MODULES = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
]


def embedding_folder(model, root):
    folder = root / "smol-embed"
    folder.mkdir()
    for f in Path(model).iterdir():
        (folder / f.name).symlink_to(f.resolve())
    (folder / "modules.json").write_text(json.dumps(MODULES))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_lasttoken": True}))
    return folder.name


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(ROOT / ".deps/test-models/SmolLM2-135M-Instruct"))
    ap.add_argument("--bin", default=str(ROOT / "target/release/wuwei"))
    ap.add_argument("--inputs", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    texts = [f"Document {i}: " + " ".join(f"word{j}" for j in range(10 + i % 40))
             for i in range(a.inputs)]
    with tempfile.TemporaryDirectory() as tmp:
        name = embedding_folder(a.model, Path(tmp))
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = open(Path(tmp) / "daemon.log", "w")
        proc = subprocess.Popen([a.bin, "serve", "--host", "127.0.0.1", "--port", str(port),
                                 "--models", tmp], stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "WUWEI_KV_SSD_DIR": str(Path(tmp) / "kv")})
        try:
            for _ in range(600):
                try:
                    if requests.get(url + "/health", timeout=2).status_code == 200:
                        break
                except requests.RequestException:
                    time.sleep(0.25)
            client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
            embed = lambda inputs: client.embeddings.create(model=name, input=inputs).usage.prompt_tokens  # noqa: E731
            embed(texts[:2])  # load and warm up
            best = {"batch": 0.0, "single": 0.0, "concurrent": 0.0}
            tokens = 0
            for _ in range(a.repeats):
                started = time.perf_counter()
                tokens = embed(texts)
                runs = {"batch": time.perf_counter() - started}
                started = time.perf_counter()
                for t in texts:
                    embed(t)
                runs["single"] = time.perf_counter() - started
                started = time.perf_counter()
                with cf.ThreadPoolExecutor(16) as pool:
                    list(pool.map(embed, texts))
                runs["concurrent"] = time.perf_counter() - started
                for k, seconds in runs.items():
                    best[k] = max(best[k], tokens / seconds)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    rows = [("one request with every input", best["batch"]),
            ("one request per input, one after another", best["single"]),
            ("one request per input, 16 at a time (batched by the engine)", best["concurrent"])]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    body = (f"{a.inputs} inputs of 12-51 words ({tokens} tokens), SmolLM2-135M-Instruct as an "
            f"embedding model (last-token pooling), best of {a.repeats}; binary "
            f"`{os.path.relpath(a.bin, ROOT)}`, load average {load} at the end.\n\n"
            "| how | tokens/s | vs one by one |\n|---|---|---|\n"
            + "".join(f"| {how} | {rate:.0f} | {rate / best['single']:.2f}x |\n" for how, rate in rows))
    print(body)
    write_section("embeddings", "Embeddings: batched vs one by one",
                  "python bench/embed_bench.py", body)


if __name__ == "__main__":
    main()
