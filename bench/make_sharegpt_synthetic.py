#!/usr/bin/env python3
"""Write a synthetic ShareGPT-format JSON file for bench_serving's `--dataset-name random`.

`--dataset-name random` takes each prompt's token ids from a ShareGPT conversation
(repeated/truncated to `--random-input-len`) and downloads ShareGPT from the HF hub
unless `--dataset-path` names a valid JSON file. The hub is unreachable here, so this
writes seeded English-like conversations in the same shape
(`[{"conversations": [{"from": "human", "value": ...}, {"from": "gpt", "value": ...}]}]`).
Only the client's load matters for this benchmark (the prompt text's content does not).

Usage: make_sharegpt_synthetic.py OUT.json [N=20000]   (no-op if OUT.json exists)
"""
import json
import os
import random
import sys

WORDS = ("the of and to in is that for it as was with be by on not this are or from at "
         "which file function value return error test code line module class method call "
         "string list python rust server request token model cache prefix latency agent "
         "tool output input issue fix change patch run build check result number data time "
         "we you they can will should would could please explain how why what when where "
         "example because first then next finally also however therefore simple complex").split()
PUNCT = [".", ".", ".", ",", ",", "?", ":", ";"]


def sentence(rng):
    n = rng.randint(6, 18)
    w = [rng.choice(WORDS) for _ in range(n)]
    w[0] = w[0].capitalize()
    return " ".join(w) + rng.choice(PUNCT)


def text(rng, lo, hi):
    return " ".join(sentence(rng) for _ in range(rng.randint(lo, hi)))


def main():
    out = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 20000
    if os.path.exists(out):
        return
    rng = random.Random(20261127)
    data = [{"id": f"synthetic-{i}", "conversations": [
        {"from": "human", "value": text(rng, 3, 30)},
        {"from": "gpt", "value": text(rng, 3, 30)}]} for i in range(n)]
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, out)
    print(f"wrote {n} synthetic ShareGPT conversations to {out}")


if __name__ == "__main__":
    main()
