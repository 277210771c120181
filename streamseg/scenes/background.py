"""The static street picture: sky, a row of facades, sidewalks, curbs and a two-lane road with markings.

Painted once per scene by casting every pixel's ray onto the ground plane or the facade plane (vectorised numpy),
so textures and markings follow the perspective exactly. Markings are anti-aliased with their distance in pixels
(field value over the field's gradient), which keeps distant dashes from flickering into noise.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from streamseg.scenes.geometry import LANE_WIDTH, StreetLayout

__all__ = ["render_background"]

FACADES = ((170, 90, 70), (200, 180, 150), (150, 150, 150), (225, 220, 205), (120, 95, 80), (185, 160, 120),
           (110, 120, 130), (210, 200, 175))  # fmt: skip


def _smooth_noise(shape, cells, rng) -> np.ndarray:
    """Smooth noise in about [-1, 1]: random values on a coarse grid, bicubic upsampling."""
    grid = rng.standard_normal((max(2, cells[0]), max(2, cells[1]))).astype(np.float32)
    return np.clip(cv2.resize(grid, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC) * 0.6, -1.5, 1.5)


def _texture(field_u, field_v, cell, rng, size=96) -> np.ndarray:
    """Noise pinned to world coordinates ``(u, v)`` (metres) with features of ``cell`` metres: moves with the
    surface, not with the image."""
    tile = np.pad(rng.standard_normal((size, size)).astype(np.float32), 8, mode="wrap")
    tile = cv2.GaussianBlur(tile, (0, 0), 1.0)[8:-8, 8:-8]  # blurred with wrap-around: the tile stays periodic
    tile /= tile.std() + 1e-6
    map_x = np.mod(field_u / cell, size).astype(np.float32)
    map_y = np.mod(field_v / cell, size).astype(np.float32)
    return cv2.remap(tile, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)


def _line(field, value, width, grad) -> np.ndarray:
    """Coverage in [0, 1] of a line ``field == value`` that is ``width`` metres wide, anti-aliased."""
    return np.clip(0.5 * width / grad - np.abs(field - value) / grad + 0.5, 0.0, 1.0)


def _periodic(field, period, width, grad, offset=0.0) -> np.ndarray:
    """Coverage of lines ``width`` wide repeating every ``period`` metres along ``field``."""
    distance = np.abs(np.mod(field - offset + 0.5 * period, period) - 0.5 * period)
    return np.clip(0.5 * width / grad - distance / grad + 0.5, 0.0, 1.0)


def _mix(image, mask, color, coverage=None) -> None:
    """Blend ``color`` into ``image`` where ``mask`` holds, weighted by ``coverage``."""
    color = np.asarray(color, np.float32)
    if coverage is None:
        image[mask] = color if color.ndim == 1 else color[mask]
        return
    a = coverage[mask][:, None]
    image[mask] = image[mask] * (1 - a) + (color if color.ndim == 1 else color[mask]) * a


def render_background(layout: StreetLayout, rng: np.random.Generator) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB picture of the empty street seen by ``layout``'s camera."""
    height, width = layout.height, layout.width
    f, hc = layout.focal, layout.camera_height
    c, s = math.cos(layout.yaw), math.sin(layout.yaw)
    a = ((np.arange(width) + 0.5 - layout.cx) / f).astype(np.float32)[None, :]  # X / Z of each column
    bv = ((np.arange(height) + 0.5 - layout.horizon) / f).astype(np.float32)[:, None]  # (hc - Y) / Z of each row
    image = np.zeros((height, width, 3), np.float32)

    # --- ground: rays below the horizon hit Y = 0 at Z = hc / bv
    below = np.broadcast_to(bv > 1e-4, (height, width))
    z = hc / np.maximum(bv, 1e-4)
    gx = a * z
    gu, gd = gx * c + z * s, -gx * s + z * c
    gu = np.where(below, gu, 0.0).astype(np.float32)
    gd = np.where(below, gd, 1e6).astype(np.float32)
    ground = below & (gd < layout.building_line)
    grad_u = np.maximum(np.hypot(*np.gradient(gu)), 1e-4)
    grad_d = np.maximum(np.hypot(*np.gradient(np.minimum(gd, 1e3))), 1e-4)

    # --- facades: the vertical plane d = building_line, at depth zf along each column's ray
    zf = layout.building_line / np.maximum(c - a * s, 1e-3)
    fu = (zf * (a * c + s)).astype(np.float32)  # (1, W)
    fy = (hc - bv * zf).astype(np.float32)  # (H, W) height above the ground
    edges = [float(fu.min()) - 5.0]
    while edges[-1] < fu.max() + 5.0:
        edges.append(edges[-1] + rng.uniform(6.0, 16.0))
    edges = np.array(edges)
    n_buildings = len(edges) - 1
    low = rng.random(n_buildings) < 0.3  # one-storey shops let the sky show
    heights = np.where(low, rng.uniform(3.5, 6.0, n_buildings), rng.uniform(7.0, 24.0, n_buildings))
    index = np.clip(np.searchsorted(edges, fu[0]) - 1, 0, n_buildings - 1)  # building of each column
    facade = ~ground & (fy < heights[index][None, :])
    sky = ~ground & ~facade

    # sky: gradient and soft clouds
    top = np.array(rng.choice([(70, 120, 200), (140, 150, 165), (95, 140, 205), (175, 150, 150)]), np.float32)
    bottom = np.clip(top + rng.uniform(40, 80), 0, 255)
    rows = np.clip(np.arange(height, dtype=np.float32) / max(layout.horizon, 1.0), 0, 1)[:, None, None]
    sky_color = top * (1 - rows) + bottom * rows
    clouds = np.clip(_smooth_noise((height, width), (4, 7), rng) * 1.4 - 0.2, 0, 1)[..., None]
    sky_color = np.broadcast_to(sky_color, (height, width, 3)) * (1 - 0.6 * clouds) + 235 * 0.6 * clouds
    _mix(image, sky, sky_color)

    # facades: per-building colour, windows on a grid, darker cornice and party walls
    base = np.array([FACADES[i] for i in rng.integers(len(FACADES), size=n_buildings)], np.float32)
    base *= rng.uniform(0.8, 1.1, (n_buildings, 1))
    bay = rng.uniform(2.6, 3.6, n_buildings)[index][None, :]
    floor_h = rng.uniform(3.0, 3.4, n_buildings)[index][None, :]
    local_u = fu - edges[index][None, :]
    fgrad_u = np.maximum(np.abs(np.gradient(fu[0]))[None, :], 1e-4)
    fgrad_y = np.maximum(np.abs(np.gradient(fy, axis=0)), 1e-4)
    facade_color = np.broadcast_to(base[index][None, :, :], (height, width, 3)).copy()
    facade_color *= (1 + 0.06 * _texture(np.broadcast_to(local_u, fy.shape), fy, 0.5, rng))[..., None]
    in_bay = np.mod(local_u, bay) / bay
    in_floor = np.mod(fy, floor_h) / floor_h
    window = (in_bay > 0.28) & (in_bay < 0.72) & (in_floor > 0.3) & (in_floor < 0.8) & (fy > 3.6)
    window &= fy < heights[index][None, :] - 1.0
    shop = (fy > 0.3) & (fy < 2.8) & (in_bay > 0.1) & (in_bay < 0.9)
    window_id = (np.floor(local_u / bay) * 131 + np.floor(fy / floor_h) * 17 + index[None, :] * 7).astype(np.int64)
    lit = (window_id * 2654435761 % 97) < 18
    glass = np.where(lit[..., None], np.array([230, 200, 120], np.float32), np.array([55, 70, 90], np.float32))
    facade_color = np.where((window | shop)[..., None], glass * (0.85 + 0.15 * (in_floor[..., None] > 0.5)),
                            facade_color)
    cornice = fy > heights[index][None, :] - 0.5
    facade_color = np.where(cornice[..., None], facade_color * 0.7, facade_color)
    facade_color *= (1 - 0.35 * _line(local_u, 0.0, 0.6, fgrad_u))[..., None]  # party walls
    facade_color *= (1 - 0.25 * _line(fy, 0.0, 0.4, fgrad_y))[..., None]
    _mix(image, facade, facade_color)

    # --- ground bands
    fine = _texture(gu, gd, 0.12, rng)
    coarse = _texture(gu, gd, 1.5, rng)
    paving = np.array(rng.choice([(175, 170, 160), (160, 160, 165), (190, 175, 150), (150, 140, 135)]), np.float32)
    asphalt = np.float32(rng.uniform(65, 100)) * np.array([1.0, 1.0, rng.uniform(1.0, 1.08)], np.float32)
    ground_color = np.empty((height, width, 3), np.float32)
    sidewalk = ground & ((gd < layout.near_curb - 0.25) | (gd > layout.far_curb + 0.25))
    curb = ground & ~sidewalk & ((gd < layout.near_curb) | (gd > layout.far_curb))
    road = ground & (gd >= layout.near_curb) & (gd <= layout.far_curb)
    tile = rng.uniform(0.5, 1.0)
    joints = np.maximum(_periodic(gu, tile, 0.03, grad_u), _periodic(gd, tile, 0.03, grad_d))
    ground_color[:] = paving * (1 + 0.05 * fine + 0.06 * coarse)[..., None] * (1 - 0.2 * joints)[..., None]
    ground_color[curb] = np.array([205, 205, 200], np.float32) * (1 + 0.04 * fine[curb])[:, None]
    road_color = asphalt * (1 + 0.07 * fine + 0.1 * coarse)[..., None]
    ground_color[road] = road_color[road]
    # markings: edge lines, dashed centre line, zebra crossing
    white = np.array([225, 225, 220], np.float32)
    centre = layout.near_curb + LANE_WIDTH
    marks = np.maximum(_line(gd, layout.near_curb + 0.3, 0.12, grad_d), _line(gd, layout.far_curb - 0.3, 0.12, grad_d))
    dashes = (np.mod(gu - rng.uniform(0, 9), 9.0) < 3.0).astype(np.float32)
    marks = np.maximum(marks, _line(gd, centre, 0.14, grad_d) * dashes)
    in_crossing = _line(gu, layout.crosswalk_u, layout.crosswalk_width, grad_u)
    stripes = _periodic(gd, 1.0, 0.5, grad_d, offset=layout.near_curb + 0.75)
    stripes *= (gd > layout.near_curb + 0.4) & (gd < layout.far_curb - 0.4)
    marks = np.maximum(marks, in_crossing * stripes)
    worn = np.clip(0.85 + 0.15 * fine, 0, 1)
    _mix(ground_color, road, white, marks * worn)
    # the sidewalks' curb edge casts a thin dark line
    ground_color *= (1 - 0.4 * np.maximum(_line(gd, layout.near_curb, 0.05, grad_d),
                                          _line(gd, layout.far_curb + 0.25, 0.05, grad_d)))[..., None]  # fmt: skip
    # the facades shade the far sidewalk next to them
    ground_color *= (1 - 0.25 * np.clip((gd - layout.building_line + 1.2) / 1.2, 0, 1))[..., None]
    _mix(image, ground, ground_color)

    image *= np.float32(rng.uniform(0.85, 1.1))  # time of day
    image += rng.normal(0.0, 2.0, image.shape).astype(np.float32)  # fixed-pattern grain
    return np.clip(image, 0, 255).astype(np.uint8)
