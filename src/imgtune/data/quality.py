"""Image-quality measures for the audit: very dark, very light, low-information and blurry images, and odd
aspect ratios (the checks of the `cleanvision` library, with our own definitions and thresholds).

Pure functions of a decoded RGB image: `measure(img)` gives the numbers, `flags(numbers)` the reasons, and
`RULES` says, for the page, which number each rule reads and where its threshold is.

How each is measured (grey = ITU-R BT.601 luma, Pillow's "L", in 0..1):
- brightness: the 99th and the 1st percentile of grey. A percentile, not the mean, so that light objects
  on a black ground (Fashion-MNIST) are not "dark" and drawings on white (clip art) are not "light": only
  an image with almost nothing bright in it is dark, and one with almost nothing dark in it is light.
- information: the entropy of the 256-bin grey histogram, in bits (0 for one flat colour, at most 8).
  Flat-colour drawings have little of it (clip art's median is 2.2 bits, line art on white under 0.5), so
  only a blank or all-but-blank frame is flagged; a noisy photo of a blank wall is not caught by this.
- blur: the variance of a 4-neighbour Laplacian of grey (0..255) resized to BLUR_SIDE x BLUR_SIDE, so that
  the number does not depend on the resolution. Judged only on an image that is not already dark, light or
  empty: those have no edges for a reason other than focus.
- aspect ratio: the long side over the short side.

Shares flagged with these thresholds (measured on this module as written; 2,000 images each: Fashion-MNIST
t10k drawn with numpy default_rng(0); Openclipart PNGs: the first 2,000 readable of the sorted paths
shuffled by random.Random(0), decoded as the audit decodes them):
  Fashion-MNIST (28x28 grey, light objects on black): dark 0.10% (two dim shirts), light 0%, low
    information 0%, blurry 0.20% (dim, low-contrast garments), odd aspect ratio 0%; any rule 0.30%.
  Openclipart (drawings on transparent, laid on white): dark 0%, light 2.20% and low information 2.05%
    (the blank and near-blank frames, mostly the same files), blurry 0.55% (mostly thin pale line art,
    which fades at 64 px), odd aspect ratio 0.25%; any rule 2.95%.
  16 sample photos (scikit-image, scikit-learn, matplotlib), blurred with a Gaussian of sigma s/224 of the
    long side: blurry at s = 0, 1, 2, 3, 4: 0, 0, 1, 9, 12 of 16. Sharp photos measured 148 to 5,581, so
    only blur plain at a 224 px input is caught, and mild softness is not.
For comparison, cleanvision's defaults (light: 5th percentile over 0.95; low information: under 3 bits of
Pillow's RGB entropy) flag 6.35% and 35.2% of the same clip art: line art on white is not a defect.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

DARK_BELOW = 0.25  # 99th-percentile grey: even the brightest 1% is under a quarter of white, underexposed
LIGHT_ABOVE = 0.90  # 1st-percentile grey: even the darkest 1% is paler than 90% grey, washed out or blank
LOW_INFORMATION_BELOW = 0.1  # bits: under about 1% of the pixels differ from the one main grey
BLURRY_BELOW = 100.0  # Laplacian variance at 64 px: sharp photos 148 and up; most blurred 3% of the width below
ASPECT_LIMIT = 5.0  # long/short side beyond which a square centre crop sees under a fifth of the image
BLUR_SIDE = 64  # blur is measured at this fixed size, so 28 px and 4,000 px images are judged alike


@dataclass(frozen=True)
class Rule:
    """One check: the measure it reads, the side of the threshold that flags, and what a flag means."""
    kind: str
    label: str  # the words a reason starts with
    measure: str
    threshold: float
    flags_when: str  # "below" or "above"
    means: str

    def fires(self, value: float) -> bool:
        return value < self.threshold if self.flags_when == "below" else value > self.threshold

    def as_dict(self) -> dict:
        return {"kind": self.kind, "label": self.label, "measure": self.measure, "threshold": self.threshold,
                "flags_when": self.flags_when, "means": self.means}


RULES = (
    Rule("dark", "very dark", "brightness_p99", DARK_BELOW, "below",
         "The brightest 1% of the image is still near black (underexposed, lens cap on)."),
    Rule("light", "very light", "brightness_p1", LIGHT_ABOVE, "above",
         "The darkest 1% of the image is still near white (overexposed, washed out, blank page)."),
    Rule("low_information", "low information", "entropy_bits", LOW_INFORMATION_BELOW, "below",
         "One flat colour, or all but a few pixels of it (blank frame, placeholder)."),
    Rule("blurry", "blurry", "laplacian_variance", BLURRY_BELOW, "below",
         f"Few sharp edges at {BLUR_SIDE}x{BLUR_SIDE} px (out of focus, motion, upscaled thumbnail). "
         "Not judged on an image already dark, light or low in information."),
    Rule("odd_aspect_ratio", "odd aspect ratio", "aspect_ratio", ASPECT_LIMIT, "above",
         "A square centre crop sees little of it (banner, strip, panorama)."),
)
_CONTENT_KINDS = ("dark", "light", "low_information")  # any of these and blur is not judged


def measure(img: Image.Image) -> dict[str, float]:
    """The numbers every rule reads, from one RGB (or any-mode) image."""
    grey = img.convert("L")
    hist = np.asarray(grey.histogram(), dtype=np.float64)
    w, h = img.size
    return {"brightness_p99": _percentile(hist, 0.99), "brightness_p1": _percentile(hist, 0.01),
            "entropy_bits": _entropy(hist), "laplacian_variance": laplacian_variance(grey),
            "aspect_ratio": round(max(w, h) / max(1, min(w, h)), 3)}


def flags(numbers: dict[str, float]) -> list[tuple[str, str]]:
    """(kind, reason) for each rule the numbers break; the reason gives the measure and the threshold."""
    out = []
    for rule in RULES:
        if rule.kind == "blurry" and any(kind in _CONTENT_KINDS for kind, _ in out):
            continue
        value = numbers[rule.measure]
        if rule.fires(value):
            out.append((rule.kind, _reason(rule, value)))
    return out


def check(img: Image.Image) -> tuple[dict[str, float], list[tuple[str, str]]]:
    """`measure` and `flags` of one image."""
    numbers = measure(img)
    return numbers, flags(numbers)


def laplacian_variance(grey: Image.Image, side: int = BLUR_SIDE) -> float:
    """Variance of the 4-neighbour Laplacian of `grey` resized to side x side (0..255 scale): high where
    there are sharp edges or fine texture, low where every transition is gradual."""
    g = np.asarray(grey.convert("L").resize((side, side), Image.BILINEAR), dtype=np.float64)
    lap = g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] - 4.0 * g[1:-1, 1:-1]
    return round(float(lap.var()), 2)


def _percentile(hist: np.ndarray, q: float) -> float:
    """The grey level (0..1) at or below which a share q of the pixels lies, read off the histogram."""
    cumulative = np.cumsum(hist)
    return round(int(np.searchsorted(cumulative, q * cumulative[-1])) / 255.0, 4)


def _entropy(hist: np.ndarray) -> float:
    p = hist[hist > 0] / hist.sum()
    return round(float(-(p * np.log2(p)).sum()) + 0.0, 4)  # + 0.0: no "-0.0" for a flat image


def _reason(rule: Rule, value: float) -> str:
    shown = {"brightness_p99": f"brightest 1% at {value:.2f} of white (under {rule.threshold:.2f})",
             "brightness_p1": f"darkest 1% at {value:.2f} of white (over {rule.threshold:.2f})",
             "entropy_bits": f"{value:.2f} bits of grey (under {rule.threshold:g} of 8)",
             "laplacian_variance": f"Laplacian variance {value:,.0f} at {BLUR_SIDE} px "
                                   f"(under {rule.threshold:,.0f})",
             "aspect_ratio": f"{value:.1f}:1 (over {rule.threshold:g}:1; the centre crop sees "
                             "little of it)"}[rule.measure]
    return f"{rule.label}: {shown}"
