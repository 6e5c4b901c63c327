"""The resampling transformers' audio loading applies: `load_audio(path, sampling_rate=16000)` (librosa backend)
calls `librosa.load(sr=16000)`, which resamples with `soxr.resample(quality="soxr_hq")` and then
`librosa.util.fix_length` to ceil(n * (target / orig)) samples (zeros appended).

librosa is used when it is installed; otherwise its two steps are redone here with soxr (pip install soxr), so the
tools need only soxr. Reference side only: never needed by the build, the tests or CI.
"""
import math

import numpy as np


def librosa_length(n, orig_sr, target_sr):
    """librosa.resample's output length: int(np.ceil(n * (float(target_sr) / orig_sr)))."""
    return n if orig_sr == target_sr else int(math.ceil(n * (float(target_sr) / orig_sr)))


def librosa_resample(y, orig_sr, target_sr=16000):
    """float32 mono `y` at orig_sr resampled to target_sr exactly as librosa.load(sr=target_sr) does it."""
    y = np.asarray(y, dtype=np.float32)
    try:
        import librosa
        return librosa.resample(y, orig_sr=orig_sr, target_sr=target_sr, res_type="soxr_hq")
    except ImportError:
        pass
    import soxr
    if orig_sr == target_sr:
        return y
    out = soxr.resample(y, orig_sr, target_sr, quality="soxr_hq")
    n = librosa_length(len(y), orig_sr, target_sr)
    return np.pad(out, (0, max(0, n - len(out))))[:n].astype(np.float32)
