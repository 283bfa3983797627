//! PNG line charts: drawn with plotters' SVG backend and rasterized by resvg with a bundled
//! font (DejaVu Sans Mono, `assets/`), so no system font or C library is needed.

use plotters::prelude::*;
use std::path::Path;

/// The bundled font (DejaVu licence in `assets/DejaVu-LICENSE.txt`).
const FONT: &[u8] = include_bytes!("../assets/DejaVuSansMono.ttf");
const FAMILY: &str = "DejaVu Sans Mono";

/// One named line of (x, y) points.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// The points, in drawing order.
    pub points: Vec<(f64, f64)>,
}

/// What a chart shows.
pub struct Chart<'a> {
    /// Title above the plot.
    pub title: &'a str,
    /// X-axis description.
    pub x: &'a str,
    /// Y-axis description.
    pub y: &'a str,
    /// The lines.
    pub series: &'a [Series],
    /// Mark every point with a dot (for few points, e.g. metric vs parameter).
    pub dots: bool,
}

fn bounds(series: &[Series]) -> Option<(f64, f64, f64, f64)> {
    let pts = series
        .iter()
        .flat_map(|s| s.points.iter())
        .filter(|(x, y)| x.is_finite() && y.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    let mut any = false;
    for &(x, y) in pts {
        any = true;
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if !any {
        return None;
    }
    let pad = |a: f64, b: f64| {
        if b > a {
            (b - a) * 0.05
        } else {
            a.abs().max(1.0) * 0.05
        }
    };
    let (px, py) = (pad(x0, x1), pad(y0, y1));
    Some((x0 - px, x1 + px, y0 - py, y1 + py))
}

/// The chart as SVG text.
pub fn svg(c: &Chart) -> Result<String, String> {
    let (x0, x1, y0, y1) = bounds(c.series).ok_or("nothing to plot: no finite points")?;
    let mut out = String::new();
    {
        let e = |e: &dyn std::fmt::Display| e.to_string();
        let root = SVGBackend::with_string(&mut out, (900, 540)).into_drawing_area();
        root.fill(&WHITE).map_err(|x| e(&x))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(c.title, ("monospace", 20))
            .margin(14)
            .x_label_area_size(44)
            .y_label_area_size(70)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|x| e(&x))?;
        chart
            .configure_mesh()
            .x_desc(c.x)
            .y_desc(c.y)
            .label_style(("monospace", 13))
            .draw()
            .map_err(|x| e(&x))?;
        for (i, s) in c.series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let pts: Vec<(f64, f64)> = s
                .points
                .iter()
                .copied()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(|x| e(&x))?
                .label(s.name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            if c.dots {
                chart
                    .draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))
                    .map_err(|x| e(&x))?;
            }
        }
        if c.series.len() > 1 {
            chart
                .configure_series_labels()
                .label_font(("monospace", 13))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(|x| e(&x))?;
        }
        root.present().map_err(|x| e(&x))?;
    }
    Ok(out)
}

/// Render SVG text to PNG bytes with the bundled font.
pub fn png_of_svg(svg: &str) -> Result<Vec<u8>, String> {
    let mut opt = resvg::usvg::Options {
        font_family: FAMILY.into(),
        ..Default::default()
    };
    let db = opt.fontdb_mut();
    db.load_font_data(FONT.to_vec());
    db.set_monospace_family(FAMILY);
    db.set_sans_serif_family(FAMILY);
    db.set_serif_family(FAMILY);
    let tree = resvg::usvg::Tree::from_str(svg, &opt).map_err(|e| e.to_string())?;
    let size = tree.size().to_int_size();
    let mut pixmap = resvg::tiny_skia::Pixmap::new(size.width(), size.height())
        .ok_or("the chart has no area")?;
    resvg::render(
        &tree,
        resvg::tiny_skia::Transform::default(),
        &mut pixmap.as_mut(),
    );
    pixmap.encode_png().map_err(|e| e.to_string())
}

/// Draw `c` into the PNG file `path` (written atomically).
pub fn line_chart(path: &Path, c: &Chart) -> Result<(), String> {
    let png = png_of_svg(&svg(c)?)?;
    crate::util::write_atomic(path, &png)
        .map_err(|e| format!("cannot write `{}`: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_renders_to_a_png_with_its_text() {
        let s = [
            Series {
                name: "train".into(),
                points: (0..50)
                    .map(|i| (f64::from(i), 1.0 / (1.0 + f64::from(i))))
                    .collect(),
            },
            Series {
                name: "val".into(),
                points: vec![(0.0, 1.0), (25.0, 0.1), (49.0, f64::NAN)],
            },
        ];
        let c = Chart {
            title: "loss",
            x: "step",
            y: "loss",
            series: &s,
            dots: false,
        };
        let text = svg(&c).unwrap();
        assert!(["loss", "step", "val"]
            .iter()
            .all(|t| text.contains(&format!("\n{t}\n"))));
        let png = png_of_svg(&text).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        // Text was drawn: a blank canvas with only lines compresses far smaller.
        let no_text = svg(&Chart {
            title: "",
            x: "",
            y: "",
            ..c
        })
        .unwrap();
        assert!(png.len() > png_of_svg(&no_text).unwrap().len());
        let empty = [Series {
            name: "x".into(),
            points: vec![(0.0, f64::NAN)],
        }];
        assert!(svg(&Chart {
            series: &empty,
            ..c
        })
        .is_err());
    }
}
