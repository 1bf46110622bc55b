"""Synthetic Fluo-N3DH-SIM+-like 3D+t sequences (2D+t too), written as a complete CTC data set.

This is the project's embedded default data: the default training run and the tests use it. Four presets
(`preset_config`): "demo", the generator's plain defaults (`SynthConfig()`: nuclei of about 12x18x18 voxels, 2.4 um,
in 32x128x128 frames, small enough for a CPU run of minutes), "medium", the default data set (`DEFAULT_PRESET`: the
demo with nuclei of uneven brightness on an uneven, hazy background, where a global threshold fails and learning
pays), "sim+", the scale of the real Fluo-N3DH-SIM+ (nuclei of about 32x50x50 voxels, 6-7 um, in 59x350x330
frames), to exercise the path real data takes, and "hard", the demo's frames and nuclei made hard to segment
(below), to tell robust models from ones that only fit clean data.

Model (all geometry in micrometres, so z comes out coarser than x/y exactly as in SIM+, where a voxel
is 0.125 x 0.125 x 0.2 um):
- nuclei are ellipsoids (ellipses in 2D) of random size, elongation, 3D orientation and brightness,
  textured by smooth noise and a few nucleoli-like spots, slightly dimmer towards the rim; with
  `irregularity`, the surface radius is the ellipsoid's times 1 + irregularity * (a sum of a few random
  low-frequency waves over the directions, within [-1, 1]), and the normalised distance follows that surface;
- motion is smooth: velocity with momentum, small random accelerations, slow rotation, weak adhesion
  between close neighbours and a hard limit on their overlap, so nuclei crowd and touch but barely
  overlap; they stay inside the volume (clamped at the borders, velocity reflected);
- divisions: the mother's track ends at frame t; two smaller daughters start at t + 1 on either side of
  her position, along her long axis, with P = mother;
- labels: where nuclei overlap, a voxel goes to the nucleus with the smallest normalised distance, so
  touching nuclei share a face; labels and intensity come from the same distance, so they match the drawn
  shape exactly; every track is present in every frame from B to E;
- imaging: Gaussian PSF (stronger in z), with `haze` out-of-focus light (the nuclei blurred by a 1 um
  Gaussian, `haze` times their in-focus light), background (with `gradient`, times 1 + gradient * a smooth
  field in [-1, 1] fixed per sequence: a ramp plus slow waves), Poisson shot noise, Gaussian read noise,
  camera offset, uint16.

SNR (`snr`) = (mean image intensity inside nuclei - mean background) / std of the background, where
the background is every voxel more than `SNR_MARGIN` voxels (chessboard distance) from any nucleus.
At the default settings every frame has an SNR in `SNR_RANGE` (4.1 to 6.3 over 50 seeds, 5.2 on
average): nuclei clearly visible but noisy, as in SIM+. More `photons` (and `background`) raise it as
their square root.

The "hard" preset has the demo's frame size, frame count and nucleus size, with a PSF twice as wide, 25
instead of 45 photons, brightness from 0.3 to 1.5, more texture, haze 0.5, a background gradient of +-40 %,
irregular surfaces (0.4: about 10 times the demo's deviation from the best-fitting ellipsoid) and about 1.6x
the nuclei, 80 % of them starting in contact (3x the touching pairs). Its frames have an SNR in
`HARD_SNR_RANGE` (1.6 to 2.7 over 20 seeds, 2.2 on average). The classical baseline (bench/baseline.py, Otsu +
distance watershed) scores SEG 0.25-0.45 on it against 0.80-0.87 on the demo (both sequences of seeds 0 and 1).
Its nuclei come out about 10 % smaller in diameter than the demo's: crowding favours the smaller ones at placement.

The "medium" preset, the default set, keeps the demo's geometry, optics and photons and changes only the light:
brightness from 0.3 to 1.5 (as hard's), haze 0.3 and a background gradient of +-40 %. Its frames have an SNR in
`MEDIUM_SNR_RANGE` (3.2 to 5.8 over 8 seeds, 4.5 on average, the demo's 4.1 to 6.3), but one global threshold
misses the dim nuclei and takes in the bright background: the classical baseline scores SEG 0.67-0.68 on its two
sequences (seed 0) against 0.85 on the demo's, so a trained network has room to show what it is worth.
"""
from __future__ import annotations

import json
import time
import zlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from scipy import ndimage

from errors import UserError

from .ctc import VOXEL_SIZE_SIM, CTCFormatError, frame_name, write_tiff, write_tracks
from .fileio import OutputFolder
from .validate import labels_present, lineage_problems

#: Bump when a change to the generator changes its output, so cached default sets are regenerated.
GENERATOR_VERSION = 1
#: The shape at which `SynthConfig.nuclei` and `.divisions` hold; other shapes keep the packing density.
REFERENCE_SHAPE = (32, 128, 128)
#: Where the default data set is cached (the project's data/ folder, ignored by git).
DEFAULT_ROOT = Path(__file__).resolve().parents[1] / "data" / "synth"
#: Every frame made with the default settings has an SNR in this range (see the module docstring).
SNR_RANGE = (3.5, 8.0)
#: Every frame of the "hard" preset has an SNR in this range, below SNR_RANGE (see the module docstring).
HARD_SNR_RANGE = (1.2, 3.2)
#: Every frame of the "medium" preset (the default set) has an SNR in this range: about the demo's, since what
#: makes it harder is the spread of brightness and background, not the noise (see the module docstring).
MEDIUM_SNR_RANGE = (2.8, 7.0)
SNR_MARGIN = 3
#: Smallest sizes accepted: (z, y/x) voxels.
MIN_SIZE = (8, 16)

# Fixed parts of the model (SynthConfig holds what a user may want to change).
_MAX_OVERLAP = 0.08       # neighbours may overlap by this fraction of their summed radii along the line of centres
_ADHESION_RANGE = 0.5     # um: neighbours closer than this are pulled into contact
_CONTACT_PROB = 0.35      # default chance that a nucleus starts in contact with an earlier one
_MOMENTUM = 0.8           # fraction of the velocity kept from one frame to the next
_ROTATION = 0.05          # radians per frame, typical slow rotation
_RIM_DIM = 0.25           # intensity at the rim is (1 - _RIM_DIM) of the centre
_DAUGHTER_SCALE = 0.8     # daughters' radii relative to the mother's (about half her volume)
_TEXTURE_SCALE = 0.25     # um, correlation length of the chromatin-like texture
_HAZE_SCALE = 1.0         # um, std of the wide Gaussian that spreads the out-of-focus light (`haze`)
_BUMPS = 6                # plane waves summed into an irregular surface
_BUMP_FREQUENCY = (1.5, 3.5)  # their spatial frequency on the unit sphere: one or two lobes, low-frequency


@dataclass
class SynthConfig:
    """What a synthetic sequence looks like; lengths in voxels are x/y voxels (z follows from voxel_size).

    (*) Other shapes, radii and frame counts scale the counts to keep the same packing density and
    division rate; a sequence of 3 frames or more has at least divisions[0] divisions. Radii shrink
    where a side of the volume is shorter than 2.5 of the largest radius.
    """
    shape: tuple[int, ...] = (32, 128, 128)                # (Z, Y, X), or (Y, X) for 2D+t
    frames: int = 10
    voxel_size: tuple[float, ...] = VOXEL_SIZE_SIM         # (x, y, z) in um
    nuclei: tuple[int, int] = (8, 14)                      # initial count at REFERENCE_SHAPE and default radii (*)
    divisions: tuple[int, int] = (1, 3)                    # per sequence at REFERENCE_SHAPE and 10 frames (*)
    radius_xy: tuple[float, float] = (7.0, 12.0)           # nucleus radius range in x/y voxels (z radius = r * vx / vz)
    elongation: float = 0.15                               # std of the log stretch of each semi-axis
    brightness: tuple[float, float] = (0.6, 1.4)           # relative brightness range between nuclei
    texture: float = 0.2                                   # std of the smooth multiplicative texture
    speed: float = 0.25                                    # typical speed in um per frame (2 x/y voxels)
    psf_sigma: tuple[float, ...] = (0.1, 0.1, 0.25)        # Gaussian PSF std (x, y, z) in um
    photons: float = 45.0                                  # photons at the centre of a nucleus of brightness 1
    background: float = 25.0                               # background photons per voxel
    read_noise: float = 4.0                                # std of the Gaussian camera noise
    offset: float = 100.0                                  # camera offset added to every voxel
    # Added after GENERATOR_VERSION 1: at these defaults they draw nothing and change nothing (see _jsonable).
    contact: float = _CONTACT_PROB                         # chance that a nucleus starts touching an earlier one
    irregularity: float = 0.0                              # surface radius within +- this fraction of the ellipsoid's
    haze: float = 0.0                                      # out-of-focus light (widely blurred), x the in-focus light
    gradient: float = 0.0                                  # background varies smoothly by up to +- this fraction

#: Fields added after version 1, with the defaults at which they are off; synth.json lists them only when they
#: differ, so a set written before they existed still matches its (unchanged) configuration.
_ADDED_FIELDS = {"contact": _CONTACT_PROB, "irregularity": 0.0, "haze": 0.0, "gradient": 0.0}


#: Named configurations; "demo" is the default (`SynthConfig()`), "sim+" the real data's scale, "hard" the demo made hard.
PRESETS = {
    "demo": SynthConfig(),
    # Fluo-N3DH-SIM+: 0.125 x 0.125 x 0.2 um voxels, frames of about 59 x 350 x 330, nuclei 6-7 um across
    # (bounding boxes of about 32 x 50 x 50 voxels, median equivalent diameter 6.2-6.6 um). Counts are given at
    # REFERENCE_SHAPE and the default radii, like the demo's: scaled to this shape and radius they give about
    # 15-30 nuclei at start (10-17 % foreground) and 2-5 divisions in 10 frames. The speed grows with the
    # nucleus size, so a nucleus moves about the same fraction of its diameter per frame as in the demo.
    "sim+": SynthConfig(shape=(59, 350, 330), frames=10, nuclei=(24, 40), divisions=(3, 6), radius_xy=(22.0, 31.0),
                        speed=0.6),
    # The demo's frames and nuclei made hard (HARD_SNR_RANGE): dimmer (fewer photons), blurrier (a PSF twice as wide),
    # of uneven brightness (a 5x range), on a hazy background (out-of-focus glow of the nuclei plus a smooth field),
    # of irregular shape, and crowded (1.6x the nuclei, most of them starting in contact). Baseline SEG 0.25-0.45 (demo 0.80-0.87).
    "hard": SynthConfig(nuclei=(14, 22), divisions=(2, 4), brightness=(0.3, 1.5), texture=0.3,
                        psf_sigma=(0.2, 0.2, 0.5), photons=25.0, contact=0.8, irregularity=0.4, haze=0.5, gradient=0.4),
    # The default data set (DEFAULT_PRESET): the demo's frames, nuclei and optics, with the nuclei of uneven brightness
    # (a 5x range, as hard's) on an uneven (+-40 %), hazy background. One global threshold can no longer find the dim
    # nuclei beside the bright ones and the bright background; a network can. Baseline SEG 0.67-0.68 (demo 0.85).
    "medium": SynthConfig(brightness=(0.3, 1.5), haze=0.3, gradient=0.4),
}
#: The preset of the default data set (data/synth), the one `python main.py --model NAME` trains on without --data.
DEFAULT_PRESET = "medium"


def preset_config(name: str | None = None) -> SynthConfig:
    """The SynthConfig of preset `name` (DEFAULT_PRESET when None); an unknown name raises UserError."""
    name = DEFAULT_PRESET if name is None else name
    if name not in PRESETS:
        raise UserError(f"--preset {name!r}: unknown synthetic preset; choose one of {', '.join(PRESETS)}")
    return replace(PRESETS[name])


@dataclass
class _Nucleus:
    label: int
    centre: np.ndarray       # um, array-axis order (z, y, x)
    velocity: np.ndarray     # um per frame
    axes: np.ndarray         # semi-axes in um
    rotation: np.ndarray     # columns: the principal directions, in array-axis order
    brightness: float
    spots: np.ndarray        # (k, ndim) nucleoli-like spot centres, local coordinates in um
    spot_gain: np.ndarray    # (k,) relative intensity change at each spot centre
    irregularity: float = 0.0          # the surface radius is (1 + irregularity * bumps(u)) of the ellipsoid's
    waves: np.ndarray | None = None    # (_BUMPS, ndim) plane-wave vectors of bumps(u), u a unit vector in the
    phases: np.ndarray | None = None   #   ellipsoid's normalised frame; phases and weights (|weights| sum to 1,
    weights: np.ndarray | None = None  #   so |bumps| <= 1)

    def bumps(self, u: np.ndarray) -> np.ndarray:
        """The surface's low-frequency radial deviation in [-1, 1] at unit directions u (..., ndim), normalised frame."""
        return np.cos(u @ self.waves.T + self.phases) @ self.weights

    def radius_along(self, direction: np.ndarray) -> float:
        """Distance from the centre to the surface along a unit direction."""
        local = self.rotation.T @ direction
        p = local / self.axes
        rho = np.sqrt(np.sum(p ** 2))
        if self.irregularity:
            return float((1 + self.irregularity * self.bumps(p / rho)) / rho)
        return float(1.0 / rho)

    def half_box(self) -> np.ndarray:
        """Half extent of the bounding box along each array axis, in um (of the ellipsoid grown by the bumps' most)."""
        return np.sqrt(((self.rotation * self.axes) ** 2).sum(axis=1)) * (1 + self.irregularity)

    def distance2(self, local: list[np.ndarray]) -> np.ndarray:
        """Normalised squared distance (< 1 inside, 1 on the surface) at local coordinates in um (one array per axis).

        An irregular surface divides the ellipsoid's distance by its radius factor along each voxel's direction,
        so labels, intensity and ownership of contested voxels all follow the one drawn surface.
        """
        d2 = sum((l / a) ** 2 for l, a in zip(local, self.axes))
        if not self.irregularity:
            return d2
        rho = np.sqrt(d2)
        u = np.stack(np.broadcast_arrays(*(l / a for l, a in zip(local, self.axes))), axis=-1) / np.maximum(rho, 1e-12)[..., None]
        return d2 / (1 + self.irregularity * self.bumps(u)) ** 2


# ----------------------------------------------------------------------------- configuration
def _spatial(cfg: SynthConfig):
    """(ndim, spacing in um per array axis, psf sigma in voxels per array axis)."""
    ndim = len(cfg.shape)
    spacing = np.array(cfg.voxel_size[:ndim][::-1], dtype=float)
    psf = np.array(cfg.psf_sigma[:ndim][::-1], dtype=float) / spacing
    return ndim, spacing, psf


def _check(cfg: SynthConfig) -> None:
    """Raise UserError naming the setting that cannot work."""
    shape = tuple(cfg.shape)
    if len(shape) not in (2, 3) or not all(isinstance(s, (int, np.integer)) for s in shape):
        raise UserError(f"synthetic shape {shape}: expected 2 or 3 integer sizes (Y,X or Z,Y,X)")
    if min(shape[-2:]) < MIN_SIZE[1] or (len(shape) == 3 and shape[0] < MIN_SIZE[0]):
        raise UserError(f"synthetic shape {shape}: too small; need at least {MIN_SIZE[0]} z slices and "
                        f"{MIN_SIZE[1]} voxels in y and x")
    if cfg.frames < 1:
        raise UserError(f"synthetic frames {cfg.frames}: need at least 1 frame")
    for name in ("voxel_size", "psf_sigma"):
        value = getattr(cfg, name)
        if len(value) < len(shape) or min(value[:len(shape)]) <= 0:
            raise UserError(f"synthetic {name} {value}: need {len(shape)} positive values in (x, y, z) order")
    for name in ("nuclei", "divisions", "radius_xy", "brightness"):
        lo, hi = getattr(cfg, name)
        if not 0 <= lo <= hi:
            raise UserError(f"synthetic {name} {(lo, hi)}: expected a range 0 <= low <= high")
    for name, high in (("contact", 1.0), ("irregularity", 0.5), ("gradient", 1.0), ("haze", float("inf"))):
        value = getattr(cfg, name)
        if not 0 <= value <= high or (name in ("irregularity", "gradient") and value == high):
            raise UserError(f"synthetic {name} {value}: expected 0 <= {name} {'<=' if name == 'contact' else '<'} {high}")
    if cfg.nuclei[1] < 1 or cfg.radius_xy[0] <= 0:
        raise UserError(f"synthetic nuclei {cfg.nuclei} / radius_xy {cfg.radius_xy}: need at least one nucleus of positive radius")


def _scales(cfg: SynthConfig, spacing: np.ndarray) -> tuple[float, float]:
    """(radius scale <= 1 so nuclei fit small volumes, count scale keeping the default packing density).

    The count scale is the volume relative to REFERENCE_SHAPE times the volume of a default nucleus
    relative to one of this config (after the radius scale).
    """
    ndim = len(cfg.shape)
    lengths = (np.array(cfg.shape) - 1) * spacing
    r_max = cfg.radius_xy[1] * cfg.voxel_size[0]
    radius_scale = float(min(1.0, *(lengths / (2.5 * r_max))))
    volume = np.prod(cfg.shape) / np.prod(REFERENCE_SHAPE[-ndim:])
    size = np.mean(SynthConfig.radius_xy) / (np.mean(cfg.radius_xy) * radius_scale)
    return radius_scale, float(volume * size ** ndim)


def _jsonable(cfg: SynthConfig) -> dict:
    """The config as synth.json holds it: fields added after version 1 only where they differ from their off value."""
    values = {k: v for k, v in asdict(cfg).items() if k not in _ADDED_FIELDS or v != _ADDED_FIELDS[k]}
    return json.loads(json.dumps(values))


def sequence_seed(seed: int, name: str) -> int:
    """The seed of sequence `name` in a data set made with `seed` (independent of the other sequences)."""
    return int(np.random.SeedSequence([seed, zlib.crc32(name.encode())]).generate_state(1)[0])


# ----------------------------------------------------------------------------- geometry
def _rotation(rng: np.random.Generator, ndim: int) -> np.ndarray:
    """A uniformly random rotation matrix."""
    q, r = np.linalg.qr(rng.standard_normal((ndim, ndim)))
    q *= np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return q


def _small_rotation(rng: np.random.Generator, ndim: int, angle: float) -> np.ndarray:
    """A rotation by about `angle` radians around a random axis."""
    a = rng.standard_normal((ndim, ndim))
    q, r = np.linalg.qr(np.eye(ndim) + angle * (a - a.T) / np.sqrt(2))
    return q * np.sign(np.diag(r))


def _new_nucleus(rng, label, centre, radius_um, cfg, ndim, velocity=None) -> _Nucleus:
    stretch = rng.normal(0.0, cfg.elongation, ndim)
    axes = radius_um * np.exp(stretch - stretch.mean())
    n_spots = int(rng.integers(1, 4))
    spots = rng.uniform(-0.5, 0.5, (n_spots, ndim)) * axes
    gain = rng.uniform(-0.5, 0.4, n_spots)  # nucleoli darker, chromocentres brighter
    if velocity is None:
        direction = rng.standard_normal(ndim)
        velocity = direction / np.linalg.norm(direction) * cfg.speed * rng.uniform(0.5, 1.5)
    n = _Nucleus(label, np.array(centre, float), np.array(velocity, float), axes, _rotation(rng, ndim),
                 float(rng.uniform(*cfg.brightness)), spots, gain)
    if cfg.irregularity > 0:  # drawn only when asked for, so regular sets keep their random stream
        waves = np.stack([_unit(rng, ndim) for _ in range(_BUMPS)]) * rng.uniform(*_BUMP_FREQUENCY, (_BUMPS, 1))
        weights = rng.standard_normal(_BUMPS)
        n.irregularity, n.waves, n.phases = cfg.irregularity, waves, rng.uniform(0, 2 * np.pi, _BUMPS)
        n.weights = weights / np.abs(weights).sum()
    return n


def _confine(n: _Nucleus, lengths: np.ndarray) -> None:
    """Keep the nucleus inside the volume: clamp its centre, reflect the velocity at a border."""
    h = np.minimum(n.half_box(), lengths / 2)
    lo, hi = h, lengths - h
    below, above = n.centre < lo, n.centre > hi
    n.centre = np.clip(n.centre, lo, hi)
    n.velocity[below] = np.abs(n.velocity[below])
    n.velocity[above] = -np.abs(n.velocity[above])


def _pair(a: _Nucleus, b: _Nucleus, rng):
    """(unit direction a->b, distance, contact distance) of two nuclei."""
    delta = b.centre - a.centre
    dist = float(np.linalg.norm(delta))
    u = delta / dist if dist > 1e-9 else _unit(rng, len(delta))
    return u, dist, a.radius_along(u) + b.radius_along(u)


def _unit(rng, ndim):
    v = rng.standard_normal(ndim)
    return v / np.linalg.norm(v)


def _overlaps(n: _Nucleus, others, rng) -> bool:
    """Whether n overlaps any of `others` by more than allowed."""
    for o in others:
        _, dist, contact = _pair(n, o, rng)
        if dist < contact * (1 - _MAX_OVERLAP):
            return True
    return False


def _separate(nuclei, rng) -> None:
    """Push overlapping pairs apart to the allowed overlap; cancel their approaching velocity."""
    for i, a in enumerate(nuclei):
        for b in nuclei[i + 1:]:
            u, dist, contact = _pair(a, b, rng)
            allowed = contact * (1 - _MAX_OVERLAP)
            if dist < allowed:
                push = (allowed - dist) / 2 * u
                a.centre -= push
                b.centre += push
                approach = float((a.velocity - b.velocity) @ u)
                if approach > 0:
                    a.velocity -= approach / 2 * u
                    b.velocity += approach / 2 * u


def _adhere(nuclei, rng) -> None:
    """Pull near neighbours (gap below _ADHESION_RANGE) a quarter of the way into contact."""
    for i, a in enumerate(nuclei):
        for b in nuclei[i + 1:]:
            u, dist, contact = _pair(a, b, rng)
            gap = dist - contact
            if 0 < gap < _ADHESION_RANGE:
                a.centre += gap / 4 * u
                b.centre -= gap / 4 * u


def _settle(nuclei, lengths, rng) -> None:
    for _ in range(4):
        _separate(nuclei, rng)
        for n in nuclei:
            _confine(n, lengths)


# ----------------------------------------------------------------------------- simulation
def _initial(cfg, rng, ndim, lengths, radius_range, count) -> list[_Nucleus]:
    """Place `count` nuclei (fewer if the volume is full), some of them in contact with an earlier one."""
    nuclei: list[_Nucleus] = []
    for label in range(1, count + 1):
        for _attempt in range(100):
            n = _new_nucleus(rng, label, rng.uniform(0, lengths), rng.uniform(*radius_range), cfg, ndim)
            if nuclei and rng.random() < cfg.contact:
                other = nuclei[int(rng.integers(len(nuclei)))]
                u = _unit(rng, ndim)
                n.centre = other.centre + u * (other.radius_along(u) + n.radius_along(-u)) * (1 - _MAX_OVERLAP / 2)
            _confine(n, lengths)
            if not _overlaps(n, nuclei, rng):
                nuclei.append(n)
                break
        else:
            break
    return nuclei


def _step(nuclei, cfg, rng, ndim, lengths) -> None:
    """Advance all nuclei by one frame."""
    for n in nuclei:
        n.velocity = _MOMENTUM * n.velocity + rng.normal(0.0, 0.35 * cfg.speed, ndim)
        speed = np.linalg.norm(n.velocity)
        if speed > 2 * cfg.speed:
            n.velocity *= 2 * cfg.speed / speed
        n.centre = n.centre + n.velocity
        n.rotation = n.rotation @ _small_rotation(rng, ndim, _ROTATION)
    _adhere(nuclei, rng)
    _settle(nuclei, lengths, rng)


def _divide(mother: _Nucleus, labels: tuple[int, int], cfg, rng, ndim) -> list[_Nucleus]:
    """Two smaller daughters on either side of the mother along her long axis, moving apart."""
    u = mother.rotation[:, int(np.argmax(mother.axes))]
    radius = _DAUGHTER_SCALE * float(np.exp(np.log(mother.axes).mean()))
    daughters = []
    for sign, label in zip((1.0, -1.0), labels):
        d = _new_nucleus(rng, label, mother.centre, radius, cfg, ndim,
                         velocity=mother.velocity + sign * 0.5 * cfg.speed * u)
        d.brightness = min(mother.brightness * 1.1, cfg.brightness[1])
        d.centre = mother.centre + sign * u * d.radius_along(u) * (1 - _MAX_OVERLAP / 2)
        daughters.append(d)
    return daughters


def _division_times(cfg, rng, count_scale) -> list[int]:
    """Frames after which a division happens: 1 .. frames - 2, so mothers and daughters live >= 2 and >= 1 frames."""
    if cfg.frames < 3:
        return []
    lo, hi = cfg.divisions
    scale = count_scale * (cfg.frames - 1) / 9
    count = max(lo, int(round(int(rng.integers(lo, hi + 1)) * scale)))
    return sorted(int(t) for t in rng.integers(1, cfg.frames - 1, count))


def _render(nuclei, shape, spacing) -> tuple[np.ndarray, np.ndarray]:
    """(labels uint16, noise-free object intensity float32) of one frame; overlaps go to the nearest nucleus."""
    labels = np.zeros(shape, np.uint16)
    best = np.ones(shape, np.float32)            # normalised squared distance of the current owner (< 1 inside)
    phantom = np.zeros(shape, np.float32)
    for n in nuclei:
        h = n.half_box()
        lo = np.maximum(np.floor((n.centre - h) / spacing).astype(int), 0)
        hi = np.minimum(np.ceil((n.centre + h) / spacing).astype(int) + 1, shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        grids = np.ix_(*(np.arange(a, b) * s - c for a, b, s, c in zip(lo, hi, spacing, n.centre)))
        local = [sum(g * n.rotation[k, j] for k, g in enumerate(grids)) for j in range(len(shape))]
        d2 = n.distance2(local).astype(np.float32)
        win = d2 < best[box]
        sigma2 = 2 * (0.25 * n.axes.min()) ** 2
        spots = sum(g * np.exp(-sum((l - c) ** 2 for l, c in zip(local, s)) / sigma2) for s, g in zip(n.spots, n.spot_gain))
        intensity = n.brightness * (1 - _RIM_DIM * d2) * (1 + spots)
        labels[box][win] = n.label
        best[box][win] = d2[win]
        phantom[box][win] = intensity[win]
    return labels, phantom


def _background_field(shape, spacing, rng) -> np.ndarray:
    """A smooth random field in [-1, 1] (mean 0): a linear ramp along a random direction (as attenuation with
    depth would make) plus three waves of 0.5 to 1 cycle per side, so it varies over the volume, not within a nucleus."""
    sides = np.array(shape) * spacing
    grids = np.ix_(*(np.arange(n) * s for n, s in zip(shape, spacing)))
    direction = _unit(rng, len(shape))
    field = sum(g * d / L for g, d, L in zip(grids, direction, sides))
    for _ in range(3):
        k = _unit(rng, len(shape)) * rng.uniform(0.5, 1.0) * 2 * np.pi / sides
        field = field + rng.uniform(0.3, 0.7) * np.cos(sum(g * kk for g, kk in zip(grids, k)) + rng.uniform(0, 2 * np.pi))
    field = np.broadcast_to(field, shape) - np.mean(field)
    return (field / np.abs(field).max()).astype(np.float32)


def _image(phantom, cfg, rng, spacing, psf, field=None) -> np.ndarray:
    """Texture, PSF blur, out-of-focus haze, background (times 1 + gradient * field), photon and read noise,
    camera offset -> uint16."""
    texture = ndimage.gaussian_filter(rng.standard_normal(phantom.shape).astype(np.float32), _TEXTURE_SCALE / spacing)
    texture /= texture.std()
    textured = np.clip(phantom * (1 + cfg.texture * texture), 0, None)
    blurred = ndimage.gaussian_filter(textured, psf)
    if cfg.haze > 0:
        blurred = blurred + cfg.haze * ndimage.gaussian_filter(textured, _HAZE_SCALE / spacing)
    background = cfg.background if field is None else cfg.background * (1 + cfg.gradient * field.astype(np.float64))
    counts = rng.poisson(background + cfg.photons * blurred.astype(np.float64))
    signal = cfg.offset + counts + rng.normal(0.0, cfg.read_noise, phantom.shape)
    return np.clip(np.rint(signal), 0, np.iinfo(np.uint16).max).astype(np.uint16)


def generate_sequence(cfg: SynthConfig, seed: int) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """One sequence: (images uint16, instance labels uint16 whose values are track labels, tracks rows L B E P).

    Deterministic for a given (cfg, seed).
    """
    _check(cfg)
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in cfg.shape)
    ndim, spacing, psf = _spatial(cfg)
    lengths = (np.array(shape) - 1) * spacing
    radius_scale, count_scale = _scales(cfg, spacing)
    radius_range = np.array(cfg.radius_xy) * cfg.voxel_size[0] * radius_scale
    count = max(1, int(round(int(rng.integers(cfg.nuclei[0], cfg.nuclei[1] + 1)) * count_scale)))
    nuclei = _initial(cfg, rng, ndim, lengths, radius_range, count)
    divisions = _division_times(cfg, rng, count_scale)
    field = _background_field(shape, spacing, rng) if cfg.gradient > 0 else None  # one per sequence, as a microscope's

    tracks = {n.label: [n.label, 0, cfg.frames - 1, 0] for n in nuclei}
    next_label = len(nuclei) + 1
    images, label_frames = [], []
    for t in range(cfg.frames):
        if t > 0:
            _step(nuclei, cfg, rng, ndim, lengths)
        labels, phantom = _render(nuclei, shape, spacing)
        images.append(_image(phantom, cfg, rng, spacing, psf, field))
        label_frames.append(labels)
        candidates = [n for n in nuclei if tracks[n.label][1] < t]  # lived at least two frames
        for _ in range(divisions.count(t)):
            if not candidates:
                break
            volume = np.array([np.prod(n.axes) for n in candidates])
            mother = candidates.pop(int(rng.choice(len(candidates), p=volume / volume.sum())))
            daughters = _divide(mother, (next_label, next_label + 1), cfg, rng, ndim)
            tracks[mother.label][2] = t
            for d in daughters:
                tracks[d.label] = [d.label, t + 1, cfg.frames - 1, mother.label]
            next_label += 2
            nuclei = [n for n in nuclei if n is not mother] + daughters

    table = np.array(sorted(tracks.values()), dtype=np.int64).reshape(-1, 4)
    problems = lineage_problems(table, {t: labels_present(l) for t, l in enumerate(label_frames)})
    if problems:  # a nucleus squeezed out of every voxel: a generator bug, never written as GT
        raise RuntimeError(f"synthetic generator (seed {seed}) made invalid ground truth: {problems[:3]}")
    return images, label_frames, table


# ----------------------------------------------------------------------------- measures
def snr(image: np.ndarray, labels: np.ndarray, margin: int = SNR_MARGIN) -> float:
    """(mean inside nuclei - mean background) / std of background; background = farther than `margin` voxels."""
    foreground = labels > 0
    near = ndimage.binary_dilation(foreground, ndimage.generate_binary_structure(labels.ndim, labels.ndim),
                                   iterations=margin)
    background = image[~near].astype(np.float64)
    return float((image[foreground].mean() - background.mean()) / background.std())


def summarize(images, labels, tracks) -> dict:
    """Counts and mean SNR of one generated sequence (what synth.json and the CLI report)."""
    tracks = np.asarray(tracks).reshape(-1, 4)
    return {"frames": len(images), "nuclei_at_start": int((tracks[:, 1] == 0).sum()), "tracks": len(tracks),
            "divisions": len(set(tracks[tracks[:, 3] > 0, 3].tolist())),
            "snr": round(float(np.mean([snr(i, l) for i, l in zip(images, labels)])), 2)}


# ----------------------------------------------------------------------------- writing
def _write_sequence(root: Path, name: str, images, labels, tracks, voxel_size) -> None:
    n = len(images)
    for t, (image, label) in enumerate(zip(images, labels)):
        write_tiff(root / name / frame_name("t", t, n), image, voxel_size)
        write_tiff(root / f"{name}_GT" / "SEG" / frame_name("man_seg", t, n), label, voxel_size)
        write_tiff(root / f"{name}_GT" / "TRA" / frame_name("man_track", t, n), label, voxel_size)
    write_tracks(root / f"{name}_GT" / "TRA" / "man_track.txt", tracks)


def write_dataset(out, cfg: SynthConfig | None = None, seed: int = 0, sequences=("01", "02"),
                  overwrite: bool = False) -> Path:
    """Generate and write a CTC data set (images, SEG and TRA ground truth of every frame, synth.json).

    The set is built in a hidden sibling folder and renamed into place when complete, so an
    interrupted run never leaves a set that looks complete. An existing non-empty `out` is refused
    unless `overwrite`, and even then unless it is a data set this generator wrote (see `OutputFolder`).
    """
    cfg = cfg or SynthConfig()
    _check(cfg)
    if seed < 0:
        raise UserError(f"synthetic seed {seed}: must be >= 0")
    out = Path(out)
    with OutputFolder(out, "dataset", overwrite, recognise=lambda folder: read_meta(folder) is not None) as tmp:
        start = time.perf_counter()
        summary = {}
        for name in sequences:
            s = sequence_seed(seed, name)
            images, labels, tracks = generate_sequence(cfg, s)
            _write_sequence(tmp, name, images, labels, tracks, cfg.voxel_size)
            summary[name] = {"seed": s, **summarize(images, labels, tracks)}
        meta = {"generator": "dataset.synthetic", "version": GENERATOR_VERSION, "seed": seed,
                "config": _jsonable(cfg), "sequences": summary, "seconds": round(time.perf_counter() - start, 2)}
        (tmp / "synth.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


def read_meta(root) -> dict | None:
    """The synth.json of a generated set, or None where there is none (or it is unreadable)."""
    try:
        return json.loads((Path(root) / "synth.json").read_text())
    except (OSError, ValueError):
        return None


def ensure_default_dataset(root=DEFAULT_ROOT, cfg: SynthConfig | None = None, seed: int = 0) -> Path:
    """The synthetic set at `root`, generated on first use and reused while its synth.json matches cfg and seed.

    cfg None: the DEFAULT_PRESET. A non-empty `root` that this generator did not make is never replaced.
    """
    cfg = cfg or preset_config()
    root = Path(root)
    meta = read_meta(root)
    if (meta is not None and meta.get("version") == GENERATOR_VERSION and meta.get("seed") == seed
            and meta.get("config") == _jsonable(cfg) and all((root / s).is_dir() for s in meta.get("sequences", {}))):
        return root
    if meta is None and root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise CTCFormatError(f"{root}: exists but is not a synthetic data set (no synth.json); move it away or pass --data")
    start = time.perf_counter()
    print(f"generating the synthetic data set in {root} ...", flush=True)
    write_dataset(root, cfg, seed, overwrite=True)
    print(f"  done in {time.perf_counter() - start:.1f} s", flush=True)
    return root
