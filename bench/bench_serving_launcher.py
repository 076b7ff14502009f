#!/usr/bin/env python3
"""Run SGLang's own `python/sglang/bench_serving.py` (from the installed sglang wheel,
unmodified) without torch/CUDA, and measure the client's CPU time during the timed window.

Why a launcher: `import sglang.bench_serving` executes three package `__init__.py` files
that bench_serving does not need:
  * `sglang/__init__.py` imports the frontend language (IPython, ...);
  * `sglang/srt/__init__.py` and `sglang/srt/utils/__init__.py` import torch (via
    `sglang.srt.utils.common`).
bench_serving itself only needs `sglang.benchmark.*` and `NetworkAddress` from
`sglang/srt/utils/network.py` (which imports only psutil and zmq). So this launcher
registers `sglang`, `sglang.srt` and `sglang.srt.utils` as bare packages whose search
path is the installed wheel's directories (their `__init__.py` are not run), then imports
`sglang.bench_serving` normally. Every module that bench_serving actually imports is the
wheel's own file.

Measurement hooks (they wrap, they do not change behaviour):
  * `get_request` (the request generator, created right after `benchmark_start_time`):
    snapshot of this process's CPU time (getrusage, all threads) and wall clock, and of the
    server's CPU time from /proc/$TURNBENCH_SERVER_PID/stat if that variable is set;
  * `calculate_metrics` (called right after all requests finished and /server_info):
    the same snapshot again. The differences are written as JSON to $TURNBENCH_CPU_OUT;
  * `remove_prefix` (called once per non-empty SSE line by the sglang request function):
    counted, to report how many chunks the server's tokens arrived in.
  The timed window thus excludes interpreter start-up, imports, tokenizer loading,
  dataset generation, the warm-up request, the 1 s sleep, and the metric computation.

Then the upstream `if __name__ == "__main__":` block (argparse + `run_benchmark(args)`) is
executed, verbatim, inside the module's namespace, so the command line is bench_serving's.
"""
import importlib.machinery
import importlib.util
import json
import os
import resource
import sys
import textwrap
import time
import types


def _bare_package(name, path):
    spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
    spec.submodule_search_locations = [path]
    mod = importlib.util.module_from_spec(spec)
    mod.__path__ = [path]
    sys.modules[name] = mod
    return mod


def _install_bare_packages():
    spec = importlib.util.find_spec("sglang")  # locates, does not execute __init__
    root = spec.submodule_search_locations[0]
    _bare_package("sglang", root)
    _bare_package("sglang.srt", os.path.join(root, "srt"))
    _bare_package("sglang.srt.utils", os.path.join(root, "srt", "utils"))
    return root


CLK_TCK = os.sysconf("SC_CLK_TCK")
_CHUNKS = [0]  # SSE lines received (see remove_prefix below)


def _server_cpu():
    pid = os.environ.get("TURNBENCH_SERVER_PID")
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        # fields[0] is field 3 (state); utime is field 14, stime field 15
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except OSError:
        return None


def _snapshot():
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {"wall": time.perf_counter(), "user": ru.ru_utime, "sys": ru.ru_stime,
            "server": _server_cpu(), "chunks": _CHUNKS[0]}


def main():
    root = _install_bare_packages()
    import sglang.bench_serving as bs

    marks = {}
    orig_get_request = bs.get_request
    orig_calculate_metrics = bs.calculate_metrics

    def get_request(*a, **kw):
        marks["start"] = _snapshot()
        return orig_get_request(*a, **kw)

    def calculate_metrics(*a, **kw):
        marks["end"] = _snapshot()
        out = os.environ.get("TURNBENCH_CPU_OUT")
        if out and "start" in marks:
            s, e = marks["start"], marks["end"]
            rec = {
                "window_wall_s": e["wall"] - s["wall"],
                "client_user_s": e["user"] - s["user"],
                "client_sys_s": e["sys"] - s["sys"],
                "sse_lines": e["chunks"] - s["chunks"],
                "server_cpu_s": (e["server"] - s["server"])
                if s["server"] is not None and e["server"] is not None else None,
            }
            with open(out, "w") as f:
                json.dump(rec, f)
        return orig_calculate_metrics(*a, **kw)

    # SSE line counter: async_request_sglang_generate calls remove_prefix once per
    # non-empty received line (content chunks and the final [DONE]); nothing else calls it
    # for the sglang backend. Counts show how many chunks the server coalesced tokens into.
    orig_remove_prefix = bs.remove_prefix
    def remove_prefix(text, prefix):
        _CHUNKS[0] += 1
        return orig_remove_prefix(text, prefix)

    bs.get_request = get_request
    bs.calculate_metrics = calculate_metrics
    bs.remove_prefix = remove_prefix

    src_path = bs.__file__
    with open(src_path) as f:
        src = f.read()
    marker = 'if __name__ == "__main__":\n'
    idx = src.rindex(marker)
    body = textwrap.dedent(src[idx + len(marker):])
    sys.argv[0] = src_path
    exec(compile(body, src_path + ":__main__", "exec"), bs.__dict__)


if __name__ == "__main__":
    main()
