//! Colours of preview pictures, shared with the gallery's viewer so a part has the same
//! colour in both.
//!
//! Sixteen part colours (PartCrafter makes at most 16 parts) chosen to stay apart on a dark
//! background; shading multiplies a part's colour by one of [`LEVELS`] fixed factors, so every
//! pixel of a point is exactly `shade(part colour, level)` and a test can attribute each pixel
//! of a picture to its part (the table below is checked to be collision-free).

/// Part colours for 1-based part ids 1..=16 (id 17 wraps to the first colour).
pub const PARTS: [[u8; 3]; 16] = [
    [230, 25, 75],   // red
    [60, 180, 75],   // green
    [67, 99, 216],   // blue
    [245, 130, 49],  // orange
    [255, 225, 25],  // yellow
    [145, 30, 180],  // purple
    [66, 212, 244],  // cyan
    [240, 50, 230],  // magenta
    [191, 239, 69],  // lime
    [250, 190, 212], // pink
    [70, 153, 144],  // teal
    [220, 190, 255], // lavender
    [154, 99, 36],   // brown
    [170, 255, 195], // mint
    [128, 128, 0],   // olive
    [255, 216, 177], // apricot
];

/// Points with part id 0 (not assigned to a part).
pub const UNASSIGNED: [u8; 3] = [138, 143, 152];
pub const BACKGROUND: [u8; 3] = [30, 32, 38];
/// Panel borders.
pub const RULE: [u8; 3] = [58, 61, 70];
pub const TEXT: [u8; 3] = [236, 236, 230];
pub const DIM_TEXT: [u8; 3] = [160, 160, 150];
pub const WARN_TEXT: [u8; 3] = [255, 110, 90];
/// A weak verdict: the gallery's warning yellow.
pub const WEAK_TEXT: [u8; 3] = [255, 200, 87];

/// Shading steps: level 0 is the darkest (far, at a splat's rim), `LEVELS - 1` the colour itself.
pub const LEVELS: usize = 12;
const DARKEST: f32 = 0.35;

/// The colour of part `id` (0 = unassigned).
pub fn part(id: u8) -> [u8; 3] {
    match id {
        0 => UNASSIGNED,
        id => PARTS[(id as usize - 1) % PARTS.len()],
    }
}

/// The multiplier of shading level `level`.
pub fn factor(level: usize) -> f32 {
    DARKEST + (1.0 - DARKEST) * level.min(LEVELS - 1) as f32 / (LEVELS - 1) as f32
}

/// `base` at shading level `level`.
pub fn shade(base: [u8; 3], level: usize) -> [u8; 3] {
    let f = factor(level);
    base.map(|c| (c as f32 * f).round() as u8)
}

/// `#rrggbb`.
pub fn hex(c: [u8; 3]) -> String {
    format!("#{:02x}{:02x}{:02x}", c[0], c[1], c[2])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shade_of_every_part_is_a_distinct_colour() {
        let mut seen = std::collections::HashMap::new();
        for id in 0..=16u8 {
            for level in 0..LEVELS {
                if let Some(other) = seen.insert(shade(part(id), level), (id, level)) {
                    panic!("part {id} level {level} has the colour of {other:?}");
                }
            }
        }
        for c in [BACKGROUND, RULE, TEXT, DIM_TEXT, WARN_TEXT, WEAK_TEXT] {
            assert!(!seen.contains_key(&c), "{c:?} is also a point colour");
        }
        assert_eq!(shade(part(3), LEVELS - 1), PARTS[2]);
        assert_eq!(part(17), PARTS[0]);
    }
}
