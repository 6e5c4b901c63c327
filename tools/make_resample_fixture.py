#!/usr/bin/env python3
"""Writes tests/data/resample/soxr-hq.safetensors: what transformers' audio loading (librosa.load(sr=16000), i.e.
soxr at "soxr_hq" then librosa's fix_length) makes of speech-like clips at other rates, for tests/io/resample_test.cpp.

  x_<rate>   f32 [n]  250 ms of a speech-like random signal at 44100, 48000 and 8000 Hz (a voiced source with a
                      gliding pitch under three formants, plus a little broadband noise; it starts abruptly at the
                      first sample, as a clip cut from a recording does)
  y_<rate>   f32 [m]  librosa_resample(x_<rate>, rate, 16000)
  x_short / y_short   60 random samples at 44100 Hz (fewer than the filter's taps) and their resampling
  lengths    i64 [K, 4]  (n, rate, soxr's own output length, librosa's length) over a grid of clip lengths and rates

  /work/venv-ref/bin/pip install soxr   # reference side only (tools/requirements-reference.txt)
  python3 tools/make_resample_fixture.py [--out tests/data/resample/soxr-hq.safetensors]
"""
import argparse, os, sys

import numpy as np
from safetensors.numpy import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from librosa_resample import librosa_length, librosa_resample  # noqa: E402

RATES = [44100, 48000, 8000]
SECONDS = 0.25


def speech_like(rate, rng):
    n = int(rate * SECONDS)
    t = np.arange(n) / rate
    f0 = 120 + 40 * t / SECONDS + 10 * np.sin(2 * np.pi * 5 * t)  # rising pitch with vibrato
    phase = 2 * np.pi * np.cumsum(f0) / rate
    x = np.zeros(n)
    for h in range(1, 70):  # harmonics up to ~11 kHz, shaped by formants near 600, 1700 and 2600 Hz
        f = h * f0.mean()
        env = sum(a * np.exp(-((f - c) / w) ** 2) for a, c, w in ((1, 600, 250), (0.5, 1700, 350), (0.3, 2600, 450)))
        x += (env + 0.01) * np.sin(h * phase + rng.uniform(0, 2 * np.pi))
    x *= 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t + rng.uniform(0, np.pi)) ** 2  # syllable-rate loudness
    x += 0.03 * rng.standard_normal(n)  # breath / fricative noise over the whole band
    return (0.6 * x / np.abs(x).max()).astype(np.float32)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "data", "resample",
                                                  "soxr-hq.safetensors"))
    args = ap.parse_args()
    import soxr
    rng = np.random.default_rng(20261205)
    tensors = {}
    for rate in RATES:
        x = speech_like(rate, rng)
        tensors[f"x_{rate}"] = x
        tensors[f"y_{rate}"] = librosa_resample(x, rate, 16000)
    tensors["x_short"] = (0.3 * rng.standard_normal(60)).astype(np.float32)
    tensors["y_short"] = librosa_resample(tensors["x_short"], 44100, 16000)
    rows = []
    for rate in [8000, 11025, 22050, 24000, 32000, 44100, 48000, 96000, 44101, 1159]:
        for n in [0, 1, 2, 3, 5, 10, 100, 441, 1000, 1159, 4410, 12345, rate, 2 * rate]:
            got = len(soxr.resample(np.zeros(n, np.float32), rate, 16000, quality="soxr_hq"))
            rows.append([n, rate, got, librosa_length(n, rate, 16000)])
    tensors["lengths"] = np.array(rows, dtype=np.int64)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    save_file(tensors, args.out, metadata={"made_by": "tools/make_resample_fixture.py", "soxr": soxr.__version__})
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes)")


if __name__ == "__main__":
    main()
