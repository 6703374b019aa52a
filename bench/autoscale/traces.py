#!/usr/bin/env python3
"""Request traces in the Azure LLM trace's CSV shape for `loadstar sim autoscale`.

  traces.py mooncake IN.jsonl OUT.csv
      Mooncake's trace (timestamp in ms, input_length, output_length) as Azure CSV.
  traces.py synth SHAPE LIKE.csv OUT.csv [--hours H] [--seed N]
      Arrivals shaped by SHAPE at LIKE's mean rate, each request's prompt and
      output lengths drawn from LIKE's (as pairs):
        diurnal  a day compressed into the hours: 0.1x to 1.9x the mean rate
        quiet    20 minutes busy (1.5x), 20 with no request, 20 busy
        bursts   0.6x the mean, and every 20 minutes a 5-minute burst at 3x
        steps    the rate steps 0.5x, 1x, 2x, 1x, 0.5x, 20 minutes each
Arrivals are a Poisson process with the shaped rate (drawn by thinning).
"""
import csv
import datetime
import json
import math
import random
import sys

BASE = datetime.datetime(2024, 1, 1)


def write(rows, out):
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["TIMESTAMP", "ContextTokens", "GeneratedTokens"])
        for at, ctx, gen in rows:
            t = BASE + datetime.timedelta(seconds=at)
            w.writerow([t.strftime("%Y-%m-%d %H:%M:%S.%f"), ctx, gen])


def mooncake(src, out):
    rows = []
    for n, line in enumerate(open(src), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            rows.append((d["timestamp"] / 1000.0, int(d["input_length"]), int(d["output_length"])))
        except (ValueError, KeyError) as e:
            sys.exit(f"{src}:{n}: {e}")
    rows.sort()
    write(rows, out)


def shape_rate(shape, t, duration):
    if shape == "diurnal":
        return 1 - 0.9 * math.cos(2 * math.pi * t / duration)
    if shape == "quiet":
        return 0.0 if 1200 <= (t % 3600) < 2400 else 1.5
    if shape == "bursts":
        return 3.0 if (t % 1200) >= 900 else 0.6
    if shape == "steps":
        return [0.5, 1, 2, 1, 0.5][min(4, int(t // 1200))]
    sys.exit(f"unknown shape {shape}: diurnal, quiet, bursts, steps")


def synth(shape, like, out, hours=1.0, seed=1):
    pairs, times = [], []
    with open(like) as f:
        r = csv.reader(f)
        next(r)
        for row in r:
            pairs.append((int(row[1]), int(row[2])))
            times.append(datetime.datetime.strptime(row[0][:26], "%Y-%m-%d %H:%M:%S.%f"))
    span = (max(times) - min(times)).total_seconds()
    mean = len(pairs) / span
    duration = 6000 if shape == "steps" else hours * 3600
    peak = 4.0 * mean
    rng = random.Random(seed)
    rows, t = [], 0.0
    while True:
        t += rng.expovariate(peak)
        if t >= duration:
            break
        if rng.random() * peak < shape_rate(shape, t, duration) * mean:
            ctx, gen = rng.choice(pairs)
            rows.append((t, ctx, gen))
    write(rows, out)


def main(argv):
    if len(argv) >= 3 and argv[0] == "mooncake":
        return mooncake(argv[1], argv[2])
    if len(argv) >= 4 and argv[0] == "synth":
        opts = dict(zip(argv[4::2], argv[5::2]))
        return synth(argv[1], argv[2], argv[3], float(opts.get("--hours", 1)),
                     int(opts.get("--seed", 1)))
    sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
