"""What to say first about a heatmap: candidate lead sentences of its summary, each with a salience score (a known
phenomenon first, then the structure of its bands, its trend, a spike, a run, an anomaly)."""

from __future__ import annotations

from .findings import Findings, Observation
from .heatmap import Heatmap
from .phenomena import LENSES, TRACES, reference

MAX_OBSERVATIONS = 5


def observations(f: Findings, heatmap: Heatmap) -> list[Observation]:
    """Candidate lead sentences with a salience score; the best `MAX_OBSERVATIONS`, most salient first.
    A known phenomenon comes first; a token reported as an anomaly gets no second observation."""
    out: list[Observation] = []
    for kind in ("attention-sink", "massive-activation", "position-bound"):
        if f.of(kind):
            out.append(Observation(kind, 1.0, {"items": f.of(kind)}))
    traced = f.metric in TRACES and reference(f.metric, heatmap.extras) is not None
    if traced:
        out.append(Observation("sites", 1.0, {}))
    if f.metric in LENSES and not f.constant:
        out.append(Observation("convergence", 1.0, {}))
    for a in f.dominant:
        out.append(Observation("sink", 0.95, {"anomaly": a}))
    if f.constant:
        out.append(Observation("flat", 0.95, {"value": f.low}))
        return out[:MAX_OBSERVATIONS]
    if len(f.bands) >= 2 and not traced:  # (a trace's reading is its sites, not its bands)
        out.append(Observation("structure", 0.9, {"bands": f.bands, "onset": f.onset}))
    if f.trend and not traced:
        out.append(Observation("trend", 0.85, dict(f.trend)))
    anomalous = {i for a in f.anomalies for i in a.indices}
    spikes = [h for h in f.highlights if h.index not in anomalous]
    if spikes:
        top = spikes[0]
        out.append(Observation("spike", 0.5 + 0.4 * min(1.0, top.peak_contrast),
                               {"token": top, "besides": spikes[0] is not f.highlights[0]}))
    if f.runs:
        best = f.runs[0]
        out.append(Observation("run", 0.55 + 0.3 * min(1.0, best.run_length / max(f.n_layers, 1)), {"token": best}))
    for a in f.profile_anomalies:
        out.append(Observation("anomaly", 0.7, {"anomaly": a}))
    if not f.highlights and not f.runs and not f.phenomena:
        out.append(Observation("flat", 0.6, {"value": None}))
    out.sort(key=lambda o: -o.score)
    return out[:MAX_OBSERVATIONS]
