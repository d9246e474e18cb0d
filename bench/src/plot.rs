//! Line charts as PNG, with no system fonts: embedded-graphics draws into an
//! RGB buffer (its built-in bitmap font for the text), `png` encodes it.

use std::path::Path;

use anyhow::Context;
use embedded_graphics::mono_font::ascii::{FONT_6X10, FONT_7X13_BOLD};
use embedded_graphics::mono_font::MonoTextStyle;
use embedded_graphics::pixelcolor::Rgb888;
use embedded_graphics::prelude::*;
use embedded_graphics::primitives::{Line, PrimitiveStyle, Rectangle};
use embedded_graphics::text::{Alignment, Text};

/// One line of a chart.
pub struct Series {
    /// Legend text.
    pub label: String,
    /// Points (x, y), x increasing.
    pub points: Vec<(f64, f64)>,
}

/// An RGB image that embedded-graphics draws into.
struct Canvas {
    w: u32,
    h: u32,
    px: Vec<u8>,
}

impl Canvas {
    fn new(w: u32, h: u32) -> Canvas {
        Canvas {
            w,
            h,
            px: vec![255; (w * h * 3) as usize],
        }
    }
}

impl OriginDimensions for Canvas {
    fn size(&self) -> Size {
        Size::new(self.w, self.h)
    }
}

impl DrawTarget for Canvas {
    type Color = Rgb888;
    type Error = core::convert::Infallible;

    fn draw_iter<I: IntoIterator<Item = Pixel<Rgb888>>>(
        &mut self,
        pixels: I,
    ) -> Result<(), Self::Error> {
        for Pixel(p, c) in pixels {
            if p.x >= 0 && p.y >= 0 && (p.x as u32) < self.w && (p.y as u32) < self.h {
                let i = ((p.y as u32 * self.w + p.x as u32) * 3) as usize;
                self.px[i] = c.r();
                self.px[i + 1] = c.g();
                self.px[i + 2] = c.b();
            }
        }
        Ok(())
    }
}

const COLORS: [Rgb888; 6] = [
    Rgb888::new(0x33, 0x33, 0x33),
    Rgb888::new(0xd6, 0x27, 0x28),
    Rgb888::new(0xff, 0x7f, 0x0e),
    Rgb888::new(0x1f, 0x77, 0xb4),
    Rgb888::new(0x2c, 0xa0, 0x2c),
    Rgb888::new(0x94, 0x67, 0xbd),
];

/// A "nice" tick step (1, 2 or 5 times a power of ten) for about `n` ticks.
fn tick_step(range: f64, n: f64) -> f64 {
    let raw = (range / n).max(1e-9);
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    mag * if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    }
}

/// Draws `series` as lines on labelled axes and writes a PNG to `path`.
pub fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> anyhow::Result<()> {
    let (w, h) = (960u32, 560u32);
    let (left, right, top, bottom) = (80i32, 220i32, 50i32, 60i32);
    let (pw, ph) = (w as i32 - left - right, h as i32 - top - bottom);
    let mut c = Canvas::new(w, h);
    let text = MonoTextStyle::new(&FONT_6X10, Rgb888::BLACK);
    let bold = MonoTextStyle::new(&FONT_7X13_BOLD, Rgb888::BLACK);
    let grid = PrimitiveStyle::with_stroke(Rgb888::new(0xe0, 0xe0, 0xe0), 1);
    let axis = PrimitiveStyle::with_stroke(Rgb888::BLACK, 1);

    let all = series.iter().flat_map(|s| s.points.iter());
    let x_max = all.clone().map(|p| p.0).fold(1.0f64, f64::max);
    let y_max = all.map(|p| p.1).fold(1.0f64, f64::max) * 1.05;
    let xs = tick_step(x_max, 8.0);
    let ys = tick_step(y_max, 6.0);
    let x_max = (x_max / xs).ceil() * xs;
    let y_max = (y_max / ys).ceil() * ys;
    let px = |x: f64| left + ((x / x_max) * pw as f64).round() as i32;
    let py = |y: f64| top + ph - ((y / y_max) * ph as f64).round() as i32;

    let _ = Text::with_alignment(title, Point::new(w as i32 / 2, 20), bold, Alignment::Center)
        .draw(&mut c);
    // Grid, ticks and tick labels.
    let mut x = 0.0;
    while x <= x_max + 1e-9 {
        let _ = Line::new(Point::new(px(x), top), Point::new(px(x), top + ph))
            .into_styled(grid)
            .draw(&mut c);
        let _ = Text::with_alignment(
            &format!("{x}"),
            Point::new(px(x), top + ph + 14),
            text,
            Alignment::Center,
        )
        .draw(&mut c);
        x += xs;
    }
    let mut y = 0.0;
    while y <= y_max + 1e-9 {
        let _ = Line::new(Point::new(left, py(y)), Point::new(left + pw, py(y)))
            .into_styled(grid)
            .draw(&mut c);
        let _ = Text::with_alignment(
            &format!("{y}"),
            Point::new(left - 6, py(y) + 3),
            text,
            Alignment::Right,
        )
        .draw(&mut c);
        y += ys;
    }
    let _ = Rectangle::new(Point::new(left, top), Size::new(pw as u32, ph as u32))
        .into_styled(axis)
        .draw(&mut c);
    // Axis labels: x under the axis, y above it (bitmap fonts do not rotate).
    let _ = Text::with_alignment(
        x_label,
        Point::new(left + pw / 2, h as i32 - 22),
        bold,
        Alignment::Center,
    )
    .draw(&mut c);
    let _ = Text::with_alignment(
        y_label,
        Point::new(left - 60, top - 12),
        bold,
        Alignment::Left,
    )
    .draw(&mut c);

    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let style = PrimitiveStyle::with_stroke(color, 2);
        for pair in s.points.windows(2) {
            let a = Point::new(px(pair[0].0), py(pair[0].1));
            let b = Point::new(px(pair[1].0), py(pair[1].1));
            let _ = Line::new(a, b).into_styled(style).draw(&mut c);
        }
        // Legend.
        let ly = top + 10 + i as i32 * 20;
        let lx = left + pw + 15;
        let _ = Line::new(Point::new(lx, ly), Point::new(lx + 24, ly))
            .into_styled(PrimitiveStyle::with_stroke(color, 3))
            .draw(&mut c);
        let _ = Text::new(&s.label, Point::new(lx + 30, ly + 3), text).draw(&mut c);
    }

    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.write_header()?.write_image_data(&c.px)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_nice() {
        assert_eq!(tick_step(100.0, 5.0), 20.0);
        assert_eq!(tick_step(7.0, 8.0), 1.0);
        assert_eq!(tick_step(1300.0, 6.0), 500.0);
    }

    #[test]
    fn writes_a_png() {
        let dir = std::env::temp_dir().join(format!("vmdedup-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("t.png");
        let s = vec![Series {
            label: "a".into(),
            points: vec![(0.0, 1.0), (10.0, 5.0)],
        }];
        line_chart(&p, "t", "x", "y", &s).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
