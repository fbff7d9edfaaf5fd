//! PartCrafter's image preparation (`prepare_image` with `bg_color = white`,
//! `padding_ratio = 0.1`), one small function per step, in plain Rust on flat buffers.
//!
//! Why plain Rust: candle has no image-processing ops, and each step has to reproduce an
//! exact upstream library behaviour (torchvision's antialiased resize, OpenCV's Otsu and
//! external contours, scikit-image's 8-connected labelling) that the goldens check bit for
//! bit. Every step is a few dozen lines and is tested on its own against the goldens.
//!
//! Layouts: colour images are planar CHW `f32` in [0, 1]; masks are row-major `H×W`.

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use image::RgbImage;

/// The network's input side (the model card and PartCrafter both use 1024²).
pub const MODEL_SIZE: usize = 1024;
/// Components smaller than this (in pixels, 8-connected) are dropped (`remove_small_objects`).
pub const MIN_OBJECT_PIXELS: usize = 200;
/// White padding around the crop, as a fraction of its longer side.
pub const PADDING_RATIO: f64 = 0.1;
/// Upstream shrinks inputs whose longer side exceeds this (area interpolation) before anything
/// else; not ported (SDXL images are 512²), such inputs are refused.
pub const MAX_INPUT_SIDE: u32 = 2000;

/// RGB u8 (HWC) → planar CHW f32 in [0, 1] (`uint8 / 255` in f32).
pub fn image_to_chw(img: &RgbImage) -> Vec<f32> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut out = vec![0f32; 3 * h * w];
    for (i, p) in img.pixels().enumerate() {
        for c in 0..3 {
            out[c * h * w + i] = p.0[c] as f32 / 255.0;
        }
    }
    out
}

/// Per-output-index taps of torchvision/PyTorch's antialiased bilinear resize along one axis:
/// `(first input index, weights)`. Computed in f32 as PyTorch does for f32 tensors.
fn aa_taps(in_size: usize, out_size: usize) -> Vec<(usize, Vec<f32>)> {
    let scale = in_size as f32 / out_size as f32;
    // Downscaling widens the triangle filter to the scale (that is the antialiasing);
    // upscaling keeps support 1, which is plain bilinear (align_corners = false).
    let (support, invscale) = if scale >= 1.0 { (scale, 1.0 / scale) } else { (1.0, 1.0) };
    (0..out_size)
        .map(|i| {
            let center = scale * (i as f32 + 0.5);
            // `as i64` truncates toward zero, like the reference's static_cast<int64_t>.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64).max(0) as usize;
            let mut w: Vec<f32> = (xmin..xmax)
                .map(|j| {
                    let t = (j as f32 - center + 0.5) * invscale;
                    (1.0 - t.abs()).max(0.0)
                })
                .collect();
            let total: f32 = w.iter().sum();
            if total != 0.0 {
                w.iter_mut().for_each(|v| *v /= total);
            }
            (xmin, w)
        })
        .collect()
}

/// torchvision `Resize((oh, ow), antialias=True)` (bilinear) of planar `channels×h×w` data.
/// Separable: the width pass first, then the height pass, each summing in f32.
pub fn resize_antialias(src: &[f32], channels: usize, h: usize, w: usize, oh: usize, ow: usize) -> Result<Vec<f32>> {
    if src.len() != channels * h * w || h == 0 || w == 0 || oh == 0 || ow == 0 {
        bail!("resize: buffer of {} values is not {channels}×{h}×{w}, or a size is zero", src.len());
    }
    let horizontal = if ow != w {
        let taps = aa_taps(w, ow);
        let mut out = vec![0f32; channels * h * ow];
        for (row_in, row_out) in src.chunks_exact(w).zip(out.chunks_exact_mut(ow)) {
            for (o, (x0, wt)) in row_out.iter_mut().zip(&taps) {
                *o = wt.iter().zip(&row_in[*x0..]).fold(0.0, |acc, (a, b)| acc + a * b);
            }
        }
        out
    } else {
        src.to_vec()
    };
    if oh == h {
        return Ok(horizontal);
    }
    let taps = aa_taps(h, oh);
    let mut out = vec![0f32; channels * oh * ow];
    for c in 0..channels {
        let plane = &horizontal[c * h * ow..(c + 1) * h * ow];
        for (y, (y0, wt)) in taps.iter().enumerate() {
            let dst = &mut out[(c * oh + y) * ow..(c * oh + y + 1) * ow];
            for (k, &wk) in wt.iter().enumerate() {
                let row = &plane[(y0 + k) * ow..(y0 + k + 1) * ow];
                if k == 0 {
                    dst.iter_mut().zip(row).for_each(|(d, s)| *d = s * wk);
                } else {
                    dst.iter_mut().zip(row).for_each(|(d, s)| *d += s * wk);
                }
            }
        }
    }
    Ok(out)
}

/// The network input: `Resize(size², antialias)(rgb / 255) − 0.5` as `[1, 3, size, size]`.
/// Fails on an (almost) all-black image, as upstream does.
pub fn model_input(img: &RgbImage, size: usize, device: &Device) -> Result<Tensor> {
    if img.width() == 0 || img.height() == 0 {
        bail!("empty image ({}×{})", img.width(), img.height());
    }
    if img.width().max(img.height()) > MAX_INPUT_SIDE {
        bail!(
            "image {}×{} is larger than {MAX_INPUT_SIDE} px on a side; shrinking it first is not implemented",
            img.width(),
            img.height()
        );
    }
    let (w, h) = (img.width() as usize, img.height() as usize);
    let resized = resize_antialias(&image_to_chw(img), 3, h, w, size, size)?;
    // Upstream refuses a "pure black image" (max of the resized image below 1e-3).
    if resized.iter().cloned().fold(f32::NEG_INFINITY, f32::max) < 1e-3 {
        bail!("the image is (almost) entirely black: nothing to segment");
    }
    let normalised: Vec<f32> = resized.iter().map(|v| v - 0.5).collect();
    Ok(Tensor::from_vec(normalised, (1, 3, size, size), device)?)
}

/// Min–max normalise the mask over all pixels, ×255, truncate to u8 (f32 arithmetic, as the
/// reference's `(m − min)/(max − min)` then `(· * 255).astype(uint8)`).
pub fn mask_to_u8(mask: &[f32]) -> Result<Vec<u8>> {
    let min = mask.iter().cloned().fold(f32::INFINITY, f32::min);
    let max = mask.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    if !(min.is_finite() && max.is_finite()) {
        bail!("background mask is empty or not finite");
    }
    if max <= min {
        bail!("background mask is constant ({min}): no object to separate from the background");
    }
    let range = max - min;
    Ok(mask.iter().map(|&m| (((m - min) / range) * 255.0) as u8).collect())
}

/// OpenCV's Otsu threshold for 8-bit data: the t maximising the between-class variance of
/// classes ≤ t and > t (first maximum wins), with OpenCV's running-mean formulation in f64.
pub fn otsu_threshold(values: &[u8]) -> u8 {
    let mut hist = [0usize; 256];
    for &v in values {
        hist[v as usize] += 1;
    }
    let scale = 1.0 / values.len().max(1) as f64;
    let mu: f64 = hist.iter().enumerate().map(|(i, &n)| i as f64 * n as f64).sum::<f64>() * scale;
    let (mut mu1, mut q1) = (0.0f64, 0.0f64);
    let (mut max_sigma, mut max_val) = (0.0f64, 0u8);
    for (i, &n) in hist.iter().enumerate() {
        let p_i = n as f64 * scale;
        mu1 *= q1;
        q1 += p_i;
        let q2 = 1.0 - q1;
        // OpenCV skips near-empty classes with FLT_EPSILON, leaving mu1 scaled by q1 (harmless:
        // it is only ever skipped while the lower class is empty or at the very end).
        if q1.min(q2) < f32::EPSILON as f64 || q1.max(q2) > 1.0 - f32::EPSILON as f64 {
            continue;
        }
        mu1 = (mu1 + i as f64 * p_i) / q1;
        let mu2 = (mu - q1 * mu1) / q2;
        let sigma = q1 * q2 * (mu1 - mu2) * (mu1 - mu2);
        if sigma > max_sigma {
            max_sigma = sigma;
            max_val = i as u8;
        }
    }
    max_val
}

/// `THRESH_BINARY`: 255 where the value is above `t`, else 0.
pub fn threshold_binary(values: &[u8], t: u8) -> Vec<u8> {
    values.iter().map(|&v| if v > t { 255 } else { 0 }).collect()
}

/// 8-connected components of the non-zero pixels: labels (0 = background, 1.. in raster order
/// of each component's first pixel) and the pixel count of each label (`sizes[0]` unused).
pub fn label_components(mask: &[u8], w: usize, h: usize) -> (Vec<u32>, Vec<usize>) {
    let mut labels = vec![0u32; w * h];
    let mut sizes = vec![0usize];
    let mut stack = Vec::new();
    for start in 0..w * h {
        if mask[start] == 0 || labels[start] != 0 {
            continue;
        }
        let label = sizes.len() as u32;
        let mut count = 0;
        labels[start] = label;
        stack.push(start);
        while let Some(p) = stack.pop() {
            count += 1;
            let (y, x) = ((p / w) as isize, (p % w) as isize);
            for dy in -1..=1 {
                for dx in -1..=1 {
                    let (ny, nx) = (y + dy, x + dx);
                    if ny < 0 || nx < 0 || ny >= h as isize || nx >= w as isize {
                        continue;
                    }
                    let q = ny as usize * w + nx as usize;
                    if mask[q] != 0 && labels[q] == 0 {
                        labels[q] = label;
                        stack.push(q);
                    }
                }
            }
        }
        sizes.push(count);
    }
    (labels, sizes)
}

/// `remove_small_objects(label(mask), min_size)`: a 0/1 mask keeping the 8-connected
/// components of at least `min_size` pixels.
pub fn remove_small_objects(mask: &[u8], w: usize, h: usize, min_size: usize) -> Vec<u8> {
    let (labels, sizes) = label_components(mask, w, h);
    labels.iter().map(|&l| (l != 0 && sizes[l as usize] >= min_size) as u8).collect()
}

/// An inclusive-size bounding rectangle `(x, y, w, h)` in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    pub x: usize,
    pub y: usize,
    pub w: usize,
    pub h: usize,
}

/// The outer border of each *external* 8-connected component (not inside a hole of another
/// one), as OpenCV's `findContours(RETR_EXTERNAL, CHAIN_APPROX_NONE)` traces it: the border
/// pixels (x, y) in Suzuki–Abe order from the component's first raster pixel. Returned in
/// raster order of those first pixels.
pub fn external_contours(mask: &[u8], w: usize, h: usize) -> Vec<Vec<(i64, i64)>> {
    // Work on a copy framed by one row/column of zeros, like OpenCV (which pads internally),
    // so components touching the image border are traced in full.
    let (pw, ph) = (w + 2, h + 2);
    let mut img = vec![false; pw * ph];
    for y in 0..h {
        for x in 0..w {
            img[(y + 1) * pw + x + 1] = mask[y * w + x] != 0;
        }
    }
    // Background reachable from the frame through 4-connected zeros: a component is external
    // iff the zero pixel left of its first raster pixel (which lies outside its outer border)
    // is reachable from the frame.
    let mut outside = vec![false; pw * ph];
    let mut stack: Vec<usize> = (0..pw * ph)
        .filter(|&p| {
            let (y, x) = (p / pw, p % pw);
            y == 0 || x == 0 || y == ph - 1 || x == pw - 1
        })
        .collect();
    stack.iter().for_each(|&p| outside[p] = true);
    while let Some(p) = stack.pop() {
        let (y, x) = (p / pw, p % pw);
        let neighbours = [
            (y > 0).then(|| p - pw),
            (y + 1 < ph).then(|| p + pw),
            (x > 0).then(|| p - 1),
            (x + 1 < pw).then(|| p + 1),
        ];
        for q in neighbours.into_iter().flatten() {
            if !img[q] && !outside[q] {
                outside[q] = true;
                stack.push(q);
            }
        }
    }

    // Neighbour offsets counter-clockwise on screen (y down): E, NE, N, NW, W, SW, S, SE.
    const DIRS: [(i64, i64); 8] = [(1, 0), (1, -1), (0, -1), (-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1)];
    let at = |x: i64, y: i64| img[y as usize * pw + x as usize];
    let dir_of = |from: (i64, i64), to: (i64, i64)| DIRS.iter().position(|&d| d == (to.0 - from.0, to.1 - from.1));

    let mut seen = vec![false; pw * ph];
    let mut contours = Vec::new();
    let (labels, _) = label_components(&img.iter().map(|&b| b as u8).collect::<Vec<_>>(), pw, ph);
    for p in 0..pw * ph {
        if !img[p] || seen[labels[p] as usize] {
            continue;
        }
        seen[labels[p] as usize] = true;
        if !outside[p - 1] {
            continue;
        }
        let p0 = ((p % pw) as i64, (p / pw) as i64);
        // Suzuki–Abe step 3.1: clockwise from the west neighbour for the first foreground pixel.
        let p1 = (0..8).map(|k| (4 + 8 - k) % 8).map(|d| (p0.0 + DIRS[d].0, p0.1 + DIRS[d].1)).find(|&(x, y)| at(x, y));
        let mut contour = vec![(p0.0 - 1, p0.1 - 1)];
        if let Some(p1) = p1 {
            // Steps 3.3–3.5: counter-clockwise around the current pixel, starting after the
            // previous one, until we are back at p0 coming from p1.
            let (mut p2, mut p3) = (p1, p0);
            loop {
                let d = dir_of(p3, p2).unwrap_or(0);
                let p4 = (1..=8)
                    .map(|k| (d + k) % 8)
                    .map(|d| (p3.0 + DIRS[d].0, p3.1 + DIRS[d].1))
                    .find(|&(x, y)| at(x, y))
                    .unwrap_or(p3);
                if p4 == p0 && p3 == p1 {
                    break;
                }
                p2 = p3;
                p3 = p4;
                contour.push((p3.0 - 1, p3.1 - 1));
            }
        }
        contours.push(contour);
    }
    contours
}

/// OpenCV's `contourArea` (non-oriented): the shoelace area of the polygon through the points.
pub fn contour_area(points: &[(i64, i64)]) -> f64 {
    let n = points.len();
    let twice: i64 = (0..n)
        .map(|i| {
            let (a, b) = (points[i], points[(i + 1) % n]);
            a.0 * b.1 - b.0 * a.1
        })
        .sum();
    twice.abs() as f64 * 0.5
}

/// `boundingRect` of a point set: inclusive of the extreme pixels.
pub fn bounding_rect(points: &[(i64, i64)]) -> Option<Rect> {
    let xmin = points.iter().map(|p| p.0).min()?;
    let xmax = points.iter().map(|p| p.0).max()?;
    let ymin = points.iter().map(|p| p.1).min()?;
    let ymax = points.iter().map(|p| p.1).max()?;
    Some(Rect { x: xmin as usize, y: ymin as usize, w: (xmax - xmin + 1) as usize, h: (ymax - ymin + 1) as usize })
}

/// Bounding box of the external contour with the largest polygon area (not pixel count: a
/// one-pixel-wide line has area 0). On a tie the contour found *last* in raster order wins:
/// OpenCV lists external contours in reverse order of discovery and `max` keeps the first.
pub fn largest_contour_bbox(mask: &[u8], w: usize, h: usize) -> Option<Rect> {
    let contours = external_contours(mask, w, h);
    let mut best: Option<(f64, &Vec<(i64, i64)>)> = None;
    for c in &contours {
        let a = contour_area(c);
        if best.is_none_or(|(b, _)| a >= b) {
            best = Some((a, c));
        }
    }
    best.and_then(|(_, c)| bounding_rect(c))
}

/// White padding (left, right, top, bottom) that makes the crop nearly square with a margin:
/// 10 % of the longer side, plus half the difference on the shorter axis (Python `int()`
/// truncation of the float sums, as upstream).
pub fn padding_lrtb(w: usize, h: usize, ratio: f64) -> [usize; 4] {
    if w > h {
        let lr = (ratio * w as f64) as usize;
        let tb = (lr as f64 + (w - h) as f64 / 2.0) as usize;
        [lr, lr, tb, tb]
    } else {
        let tb = (ratio * h as f64) as usize;
        let lr = (tb as f64 + (h - w) as f64 / 2.0) as usize;
        [lr, lr, tb, tb]
    }
}

/// Composite `rgb` (CHW, [0,1]) on white with the 0/1 `mask`, crop to `rect`, pad with white.
/// Returns the planar result and its (width, height).
pub fn composite_crop_pad(
    rgb: &[f32],
    mask: &[u8],
    w: usize,
    h: usize,
    rect: Rect,
    pad: [usize; 4],
) -> Result<(Vec<f32>, usize, usize)> {
    if rect.x + rect.w > w || rect.y + rect.h > h || rgb.len() != 3 * w * h || mask.len() != w * h {
        bail!("crop {rect:?} or buffers do not fit a {w}×{h} image");
    }
    let [l, r, t, b] = pad;
    let (ow, oh) = (rect.w + l + r, rect.h + t + b);
    let mut out = vec![1f32; 3 * ow * oh];
    for c in 0..3 {
        for y in 0..rect.h {
            for x in 0..rect.w {
                let src = (rect.y + y) * w + rect.x + x;
                let m = mask[src] as f32;
                // rgb·m + bg·(1 − m) with bg = 1 (white), as upstream computes it.
                out[c * ow * oh + (y + t) * ow + x + l] = rgb[c * w * h + src] * m + (1.0 - m);
            }
        }
    }
    Ok((out, ow, oh))
}

/// Planar CHW f32 in [0,1] → RGB u8 by ×255 and truncation (upstream's `astype(uint8)`).
pub fn chw_to_image(chw: &[f32], w: usize, h: usize) -> Result<RgbImage> {
    if chw.len() != 3 * w * h {
        bail!("image buffer of {} values is not 3×{h}×{w}", chw.len());
    }
    let plane = w * h;
    let raw = (0..plane).flat_map(|i| (0..3).map(move |c| (chw[c * plane + i] * 255.0) as u8)).collect();
    RgbImage::from_raw(w as u32, h as u32, raw).ok_or_else(|| anyhow::anyhow!("image buffer size"))
}

/// Every intermediate of the preparation (kept for `--keep-images` and for the golden tests).
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Input size.
    pub width: usize,
    pub height: usize,
    /// d1 resized back to the input size (before min–max), `H×W`.
    pub mask_resized: Vec<f32>,
    /// Soft alpha, u8.
    pub alpha_u8: Vec<u8>,
    pub otsu_threshold: u8,
    /// 0/255 after Otsu.
    pub alpha_otsu: Vec<u8>,
    /// 0/1 after dropping small components.
    pub alpha_clean: Vec<u8>,
    pub bbox: Rect,
    /// (left, right, top, bottom).
    pub pad: [usize; 4],
    /// The composited, cropped, padded image, planar CHW in [0,1].
    pub output: Vec<f32>,
    pub out_width: usize,
    pub out_height: usize,
}

impl Prepared {
    /// The prepared image as RGB u8.
    pub fn image(&self) -> Result<RgbImage> {
        chw_to_image(&self.output, self.out_width, self.out_height)
    }
}

/// Everything after the network: `d1` (`mask_h × mask_w`, row-major) → the prepared image.
/// Fails when nothing is left of the object (empty mask after cleaning).
pub fn prepare_from_mask(img: &RgbImage, d1: &[f32], mask_h: usize, mask_w: usize) -> Result<Prepared> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mask_resized = resize_antialias(d1, 1, mask_h, mask_w, h, w)?;
    let alpha_u8 = mask_to_u8(&mask_resized)?;
    let otsu_threshold = otsu_threshold(&alpha_u8);
    let alpha_otsu = threshold_binary(&alpha_u8, otsu_threshold);
    let alpha_clean = remove_small_objects(&alpha_otsu, w, h, MIN_OBJECT_PIXELS);
    let Some(bbox) = largest_contour_bbox(&alpha_clean, w, h) else {
        bail!(
            "background removal left no object: the mask is empty after removing components under \
             {MIN_OBJECT_PIXELS} px (nothing to reconstruct)"
        );
    };
    let pad = padding_lrtb(bbox.w, bbox.h, PADDING_RATIO);
    let (output, out_width, out_height) = composite_crop_pad(&image_to_chw(img), &alpha_clean, w, h, bbox, pad)?;
    Ok(Prepared {
        width: w,
        height: h,
        mask_resized,
        alpha_u8,
        otsu_threshold,
        alpha_otsu,
        alpha_clean,
        bbox,
        pad,
        output,
        out_width,
        out_height,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aa_downscale_by_two_uses_1_3_3_1_weights() {
        let taps = aa_taps(1024, 512);
        assert_eq!(taps[10].0, 19);
        assert_eq!(taps[10].1, vec![0.125, 0.375, 0.375, 0.125]);
    }

    #[test]
    fn otsu_splits_two_clusters() {
        let mut v = vec![10u8; 100];
        v.extend(vec![200u8; 100]);
        let t = otsu_threshold(&v);
        assert!((10..200).contains(&t), "{t}");
        assert_eq!(t, 10);
    }

    #[test]
    fn line_has_zero_area_and_square_has_area() {
        // 3×3 square and a 1-px column; the square wins although the line has more pixels.
        let (w, h) = (8, 6);
        let mut m = vec![0u8; w * h];
        for y in 1..4 {
            for x in 1..4 {
                m[y * w + x] = 1;
            }
        }
        for y in 0..h {
            m[y * w + 7] = 1;
        }
        let cs = external_contours(&m, w, h);
        assert_eq!(cs.len(), 2);
        let areas: Vec<f64> = cs.iter().map(|c| contour_area(c)).collect();
        // The column starts on row 0, so it is found first.
        assert_eq!(areas, vec![0.0, 4.0]);
        assert_eq!(largest_contour_bbox(&m, w, h), Some(Rect { x: 1, y: 1, w: 3, h: 3 }));
    }

    #[test]
    fn component_inside_a_hole_is_not_external() {
        let (w, h) = (7, 7);
        let mut m = vec![0u8; w * h];
        for i in 0..7 {
            m[i] = 1;
            m[6 * w + i] = 1;
            m[i * w] = 1;
            m[i * w + 6] = 1;
        }
        m[3 * w + 3] = 1;
        assert_eq!(external_contours(&m, w, h).len(), 1);
    }

    #[test]
    fn empty_mask_has_no_bbox() {
        assert_eq!(largest_contour_bbox(&[0u8; 12], 4, 3), None);
    }
}
