//! What the background remover's mask says about the picture: how much of the frame the
//! object covers and in how many pieces.
//!
//! The mask is the cleaned binary mask BriaRMBG hands on (0 or 255 per pixel, small specks
//! already removed), so a pixel counts as foreground at 128 and above. Components are
//! 8-connected, as the contour search that picks the crop sees them; a scan with an explicit
//! stack keeps a frame-sized blob from overflowing the call stack.

use image::GrayImage;
use serde::{Deserialize, Serialize};

/// Coverage and pieces of a foreground mask.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MaskStats {
    /// Foreground pixels / all pixels, in [0, 1].
    pub coverage: f64,
    /// 8-connected foreground components.
    pub components: usize,
}

/// Coverage and component count of `mask` (an empty image has coverage 0, no components).
pub fn mask_stats(mask: &GrayImage) -> MaskStats {
    let (w, h) = (mask.width() as usize, mask.height() as usize);
    let fg: Vec<bool> = mask.as_raw().iter().map(|&v| v >= 128).collect();
    let total = w * h;
    if total == 0 {
        return MaskStats { coverage: 0.0, components: 0 };
    }
    let on = fg.iter().filter(|&&b| b).count();
    MaskStats { coverage: on as f64 / total as f64, components: count_components(&fg, w, h) }
}

fn count_components(fg: &[bool], w: usize, h: usize) -> usize {
    let mut seen = vec![false; fg.len()];
    let mut stack = Vec::new();
    let mut components = 0;
    for start in 0..fg.len() {
        if !fg[start] || seen[start] {
            continue;
        }
        components += 1;
        seen[start] = true;
        stack.push(start);
        while let Some(i) = stack.pop() {
            let (x, y) = ((i % w) as isize, (i / w) as isize);
            for dy in -1..=1 {
                for dx in -1..=1 {
                    let (nx, ny) = (x + dx, y + dy);
                    if nx < 0 || ny < 0 || nx >= w as isize || ny >= h as isize {
                        continue;
                    }
                    let j = ny as usize * w + nx as usize;
                    if fg[j] && !seen[j] {
                        seen[j] = true;
                        stack.push(j);
                    }
                }
            }
        }
    }
    components
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(w: u32, h: u32, on: &[(u32, u32)]) -> GrayImage {
        let mut m = GrayImage::new(w, h);
        for &(x, y) in on {
            m.put_pixel(x, y, image::Luma([255]));
        }
        m
    }

    #[test]
    fn counts_coverage_and_diagonal_neighbours_as_one_piece() {
        // Two pixels touching at a corner are one 8-connected piece; a far pixel is another.
        let m = mask(10, 10, &[(1, 1), (2, 2), (8, 8)]);
        let s = mask_stats(&m);
        assert_eq!(s.components, 2);
        assert!((s.coverage - 0.03).abs() < 1e-12);
        assert_eq!(mask_stats(&GrayImage::new(4, 4)), MaskStats { coverage: 0.0, components: 0 });
        let full = GrayImage::from_pixel(512, 512, image::Luma([255]));
        assert_eq!(mask_stats(&full), MaskStats { coverage: 1.0, components: 1 });
    }

    #[test]
    fn soft_values_below_half_are_background() {
        let m = GrayImage::from_raw(2, 1, vec![127, 128]).unwrap();
        assert_eq!(mask_stats(&m), MaskStats { coverage: 0.5, components: 1 });
    }
}
