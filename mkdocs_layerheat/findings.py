"""What the analysis finds in a heatmap (`analysis.analyze`), as the summaries read it: bands of layers, tokens'
peaks and sustained runs, anomalies, observations."""

from __future__ import annotations

from dataclasses import dataclass, field

from .phenomena import Phenomenon

MIN_RUN = 3  # a sustained run lasts at least max(MIN_RUN, a tenth of the layers) layers


@dataclass
class Band:
    """Consecutive layers that behave alike, or (a group) every band of one kind: `spans` lists its runs of
    layers. Values are on the figure's scale; shares are of the band's cells."""

    first_layer: int
    last_layer: int
    kind: str  # uniform-high | uniform-medium | uniform-low | differentiating | sparse
    mean: float
    rows: tuple[int, int]  # row indices [first, last] in the matrix
    share_high: float  # share of the band's cells in the top third of the unit scale
    share_low: float  # ... in the bottom third
    p10: float  # 10th and 90th percentiles of the band's cells: 80% of them lie in between
    p90: float
    outliers: int = 0  # cells where a token stands out (a uniform band says "apart from" them)
    outlier_cells: list[tuple[int, int]] = field(default_factory=list)  # (token, layer) of the first few
    high_tokens: list[int] = field(default_factory=list)  # differentiating: tokens whose mean over the band is high
    spans: list[tuple[int, int]] = field(default_factory=list)  # its runs of layers (one, but for a group)

    @property
    def n_layers(self) -> int:
        return self.rows[1] - self.rows[0] + 1


@dataclass
class TokenFinding:
    index: int
    token: str  # the display label
    peak_layer: int | None  # where the token stands out most from the other tokens of that layer (None: no value)
    peak_value: float | None  # its value there, on the figure's scale
    peak_median: float | None  # the median of that layer over the analysed tokens
    peak_contrast: float  # (value - median) on the unit scale
    stands_out: bool  # the peak clears the stands-out test
    sustained: tuple[int, int] | None  # the longest run of layers where it stands out, if long enough
    sustained_mean: float | None = None  # the token's mean over that run
    sustained_median: float | None = None  # the mean of the layers' medians over that run
    set_aside: bool = False  # a dominant token, analysed apart
    peak_raw: float | None = None  # lens metrics with raw values: the probability at the peak, and the layer's
    peak_raw_median: float | None = None  # raw median over the analysed tokens (a figure scaled by layer hides it)

    run_rows: tuple[int, int] = (0, -1)  # row indices of the sustained run

    @property
    def run_length(self) -> int:
        return self.run_rows[1] - self.run_rows[0] + 1 if self.sustained else 0


@dataclass
class Anomaly:
    kind: str  # "dominant" (set aside before everything else) | "profile" (a depth profile unlike any other)
    indices: list[int]  # the token's positions; a profile anomaly groups repeats of the same piece
    token: str
    special: bool  # a special token of the tokenizer, or a chat-template token
    token_mean: float  # the token's mean over the layers (the first position's, for a group)
    others_median: float  # the median of the other tokens' means
    top_layers: int = 0  # dominant: at how many layers it has the highest value of all tokens
    run: tuple[int, int] | None = None  # profile: the layers where it departs most from the others
    direction: str = ""  # "above" | "below" the layers' medians over that run
    run_mean: float | None = None
    run_median: float | None = None
    distance: float = 0.0  # profile: RMS distance (unit scale) to the typical profile (the layers' medians)
    typical_distance: float = 0.0  # ... and the median of that distance over all tokens
    token_kind: str = "text"  # text | special | template | generated (Heatmap.kinds)
    listed_run: bool = False  # profile: its run is the sustained run the summary already lists


@dataclass
class Observation:
    kind: str  # sink | structure | trend | spike | run | late | anomaly | flat
    score: float
    data: dict


@dataclass
class Findings:
    n_layers: int
    n_tokens: int
    layers: list[int]
    labels: list[str]
    low: float  # range of the figure's (analysed) values
    high: float
    raw_low: float  # range of the metric's raw values
    raw_high: float
    nan_cells: int
    constant: bool  # every cell has the same value
    scale_low: float  # range of the tokens not set aside: the unit scale
    scale_high: float
    layer_means: list[float]  # over the tokens not set aside
    layer_medians: list[float]
    top_layers: list[int]  # highest mean first
    bands: list[Band]
    groups: list[Band]  # the bands of each kind taken together, in the order the kinds first appear
    tokens: list[TokenFinding]
    highlights: list[TokenFinding]  # tokens standing out at their peak, strongest first
    runs: list[TokenFinding]  # tokens with a sustained run, longest first
    shown: list[TokenFinding] = field(default_factory=list)  # the highlights the summary names (see `_shown`)
    unshown: int = 0  # the other highlights, neither named nor described elsewhere: the summary counts them
    anomalies: list[Anomaly] = field(default_factory=list)
    observations: list[Observation] = field(default_factory=list)
    set_aside: list[int] = field(default_factory=list)  # token positions analysed apart (dominant)
    min_run: int = MIN_RUN
    trend: dict | None = None  # {"direction", "rho", "first", "last"} when layer means move with depth
    token_kinds: list[str] = field(default_factory=list)  # text | special | template | generated, per token
    phenomena: list[Phenomenon] = field(default_factory=list)  # known phenomena, stated once each
    aside_cells: int = 0  # cells the phenomena explain, left out of everything else
    rescaled: bool = False  # layer/token scaling redone without those cells
    metric: str = ""
    predicts: list[str | None] = field(default_factory=list)  # lens metrics: the predicted token's label
    settling: dict | None = None  # lens metrics: when predictions settle (see `_settling`)
    onset: Band | None = None  # the first band where tokens differ, after uniform ones only
    clip: dict | None = None  # `color_range: robust`: the colour scale and the cells beyond it (see `_clip`)
    flat: list[tuple[int, int]] = field(default_factory=list)  # layers where no raw value is 1.5x the median

    def of(self, kind: str) -> list[Phenomenon]:
        return [p for p in self.phenomena if p.kind == kind]

    @property
    def edge(self) -> list[int]:
        return next((p.tokens for p in self.phenomena if p.kind == "edge-effect"), [])

    def repeated(self, index: int) -> bool:
        """Whether another token has the same label (then a text names it with its position)."""
        return self.labels.count(self.labels[index]) > 1

    @property
    def dominant(self) -> list[Anomaly]:
        return [a for a in self.anomalies if a.kind == "dominant"]

    @property
    def profile_anomalies(self) -> list[Anomaly]:
        return [a for a in self.anomalies if a.kind == "profile"]
