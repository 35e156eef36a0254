"""Runs the reference scripts of this folder in one long-lived Python process.

Importing mlx-lm (and the transformers it pulls in) takes ~2.5 s of CPU; the Rust parity
tests run a reference script two or three times per case, ~150 times in all, so a fresh
interpreter per script spent most of those tests' time on imports. This process imports once
and runs each script as its own `__main__` (runpy), exactly as `python SCRIPT ARGS...` would:
same argv, same stdout, exit status from SystemExit or an exception.

Protocol: one JSON request per line on stdin, `{"argv": ["path/to/script.py", "arg", ...]}`;
one JSON reply per line on the stream that was stdout, `{"ok": bool, "stdout": str, "error":
str}`. While a script runs, file descriptor 1 points at stderr, so nothing a library writes
there can corrupt the replies.
"""
import contextlib
import io
import json
import os
import runpy
import sys
import traceback


def run(argv):
    out = io.StringIO()
    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv = list(argv)
    # `python SCRIPT` puts the script's folder first on sys.path.
    sys.path.insert(0, os.path.dirname(os.path.abspath(argv[0])))
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(argv[0], run_name="__main__")
        return {"ok": True, "stdout": out.getvalue(), "error": ""}
    except SystemExit as e:
        ok = e.code in (None, 0)
        return {"ok": ok, "stdout": out.getvalue(), "error": "" if ok else f"exit {e.code}"}
    except BaseException:  # noqa: BLE001 - the caller shows the traceback
        return {"ok": False, "stdout": out.getvalue(), "error": traceback.format_exc()}
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path


def main():
    replies = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    # The scripts' heavy imports, once (they are looked up again from sys.modules per run).
    import mlx.core  # noqa: F401
    import mlx_lm  # noqa: F401

    for line in sys.stdin:
        if not line.strip():
            continue
        reply = run(json.loads(line)["argv"])
        sys.stderr.flush()
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


if __name__ == "__main__":
    main()
