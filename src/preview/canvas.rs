//! An RGB picture with the few drawing operations previews need: filled rectangles,
//! clipped pixels and text in the built-in font.

use image::{Rgb, RgbImage};

use super::font;

pub struct Canvas {
    pub img: RgbImage,
}

impl Canvas {
    pub fn new(width: u32, height: u32, background: [u8; 3]) -> Self {
        Self { img: RgbImage::from_pixel(width, height, Rgb(background)) }
    }

    /// Sets a pixel; outside the picture nothing happens.
    pub fn put(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as u32) < self.img.width() && (y as u32) < self.img.height() {
            self.img.put_pixel(x as u32, y as u32, Rgb(c));
        }
    }

    pub fn rect(&mut self, x: u32, y: u32, w: u32, h: u32, c: [u8; 3]) {
        for yy in y..y.saturating_add(h) {
            for xx in x..x.saturating_add(w) {
                self.put(xx as i64, yy as i64, c);
            }
        }
    }

    /// Draws `text` with its top-left corner at (`x`, `y`), each font pixel `scale`² pixels.
    pub fn text(&mut self, x: u32, y: u32, text: &str, scale: u32, c: [u8; 3]) {
        for (i, ch) in text.chars().enumerate() {
            let gx = x + i as u32 * font::ADVANCE * scale;
            for row in 0..font::HEIGHT {
                for col in 0..font::WIDTH {
                    if font::ink(ch, col, row) {
                        self.rect(gx + col * scale, y + row * scale, scale, scale, c);
                    }
                }
            }
        }
    }

    /// Blits `src` with its top-left corner at (`x`, `y`).
    pub fn paste(&mut self, src: &RgbImage, x: u32, y: u32) {
        for (sx, sy, p) in src.enumerate_pixels() {
            self.put((x + sx) as i64, (y + sy) as i64, p.0);
        }
    }
}

/// `text` cut to `max` characters, a `~` marking the cut.
pub fn fit(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut s: String = text.chars().take(max.saturating_sub(1)).collect();
    s.push('~');
    s
}
