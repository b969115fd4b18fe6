//! Input images for the `score` subcommand: 28x28 PNG files, folders of them, or
//! IDX image files.
//!
//! PNG rules ([`decode_png_28x28`]):
//! - the image must be 28x28;
//! - 8-bit greyscale, greyscale+alpha, RGB and RGBA are accepted; colour is
//!   turned into grey with the ITU-R BT.601 luma weights
//!   (0.299 R + 0.587 G + 0.114 B, rounded), and alpha is ignored;
//! - palette images and greyscale of 1, 2 or 4 bits are expanded to 8 bits
//!   (png's `Transformations::EXPAND`) and then treated as above;
//! - 16-bit images are refused rather than silently reduced to 8 bits.
//!
//! Decoding runs under a `png::Limits` of 1 MiB, and a PNG file bigger than
//! [`MAX_PNG_FILE_BYTES`] is refused before it is read, so a hostile header
//! cannot make this allocate much.

use crate::dataset::{IMAGE_SIDE, PIXELS};
use anyhow::{anyhow, bail, Context, Result};
use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};

/// The most bytes a PNG file may have (a 28x28 PNG is usually under 1 KB; this
/// leaves room for metadata chunks).
pub const MAX_PNG_FILE_BYTES: u64 = 4 << 20;

/// Decoder memory limit handed to the png crate.
const PNG_LIMIT_BYTES: usize = 1 << 20;

const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];

fn color_name(c: png::ColorType) -> &'static str {
    match c {
        png::ColorType::Grayscale => "greyscale",
        png::ColorType::Rgb => "RGB",
        png::ColorType::Indexed => "palette",
        png::ColorType::GrayscaleAlpha => "greyscale+alpha",
        png::ColorType::Rgba => "RGBA",
    }
}

fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((299 * r as u32 + 587 * g as u32 + 114 * b as u32 + 500) / 1000) as u8
}

/// Decode the bytes of a 28x28 PNG into 784 grey pixels (row-major). `name` is
/// used in error messages, which are one line each.
pub fn decode_png_28x28(bytes: &[u8], name: &str) -> Result<[u8; PIXELS]> {
    if !bytes.starts_with(&PNG_SIGNATURE) {
        if bytes.is_empty() {
            bail!("{name}: file is empty, expected a PNG image");
        }
        bail!("{name}: not a PNG file (no PNG signature)");
    }
    let limits = png::Limits {
        bytes: PNG_LIMIT_BYTES,
    };
    let mut decoder = png::Decoder::new_with_limits(Cursor::new(bytes), limits);
    let bad = |e: png::DecodingError| anyhow!("{name}: invalid or truncated PNG: {e}");
    let (width, height, color, depth) = {
        let info = decoder.read_header_info().map_err(bad)?;
        (info.width, info.height, info.color_type, info.bit_depth)
    };
    if (width as usize, height as usize) != (IMAGE_SIDE, IMAGE_SIDE) {
        bail!("{name}: image is {width}x{height}, expected 28x28");
    }
    if depth == png::BitDepth::Sixteen {
        bail!(
            "{name}: image is 16-bit {}, expected 8 bits per sample",
            color_name(color)
        );
    }
    decoder.set_transformations(png::Transformations::EXPAND);
    let mut reader = decoder.read_info().map_err(bad)?;
    // png 0.18 accepts a PLTE chunk whose length is not a multiple of 3 and then
    // panics while expanding it (image-rs/image-png#694; found by our fuzzer,
    // fuzz/regressions/png-plte-len7.bin): refuse such a palette here.
    if let Some(pal) = reader.info().palette.as_ref() {
        if pal.is_empty() || pal.len() % 3 != 0 || pal.len() > 256 * 3 {
            bail!("{name}: invalid PNG palette of {} bytes (expected 3 per entry, at most 256 entries)", pal.len());
        }
    }
    if color == png::ColorType::Indexed && reader.info().palette.is_none() {
        bail!("{name}: palette PNG without a palette");
    }
    let (out_color, out_depth) = reader.output_color_type();
    if out_depth != png::BitDepth::Eight {
        bail!(
            "{name}: image decodes to {}-bit {}, expected 8 bits per sample",
            out_depth as u8,
            color_name(out_color)
        );
    }
    let channels = match out_color {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => bail!("{name}: palette image could not be expanded"),
    };
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| anyhow!("{name}: PNG output size overflows"))?;
    if size != PIXELS * channels {
        bail!("{name}: unexpected decoded size {size} bytes for a 28x28 image");
    }
    let mut buf = vec![0u8; size];
    let frame = reader.next_frame(&mut buf).map_err(bad)?;
    let line = frame.line_size;
    if line < IMAGE_SIDE * channels || frame.buffer_size() > buf.len() {
        bail!("{name}: unexpected PNG frame layout");
    }
    let mut out = [0u8; PIXELS];
    for y in 0..IMAGE_SIDE {
        let row = &buf[y * line..y * line + IMAGE_SIDE * channels];
        for (x, px) in row.chunks_exact(channels).enumerate() {
            out[y * IMAGE_SIDE + x] = match channels {
                1 | 2 => px[0],
                _ => luma(px[0], px[1], px[2]),
            };
        }
    }
    Ok(out)
}

/// Read a file of at most `max` bytes (more is an error naming the file).
fn read_capped(path: &Path, max: u64) -> Result<Vec<u8>> {
    let name = path.display();
    let file = std::fs::File::open(path).with_context(|| format!("{name}: cannot open"))?;
    let mut bytes = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("{name}: cannot read"))?;
    if bytes.len() as u64 > max {
        bail!("{name}: file is larger than {max} bytes, too large for a 28x28 PNG");
    }
    Ok(bytes)
}

/// Load a 28x28 PNG file as 784 grey pixels; see the module notes for what is
/// accepted.
pub fn load_png_28x28(path: &Path) -> Result<[u8; PIXELS]> {
    let bytes = read_capped(path, MAX_PNG_FILE_BYTES)?;
    decode_png_28x28(&bytes, &path.display().to_string())
}

/// The first up-to-8 bytes of a file.
fn sniff(path: &Path) -> Result<Vec<u8>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut head = Vec::with_capacity(8);
    file.take(8)
        .read_to_end(&mut head)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    Ok(head)
}

fn has_png_extension(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("png"))
}

/// Gather the images to score. Each path is
/// - a folder: every `*.png` file directly inside it (any case of the
///   extension), sorted by file name; other files and subfolders are ignored,
///   and a folder with no PNG is an error;
/// - an IDX image file, recognised by content (gzip `1f 8b` or the IDX image
///   magic `00 00 08 03`): all its images, which must be 28x28, named
///   `PATH[i]`;
/// - any other file is read as a PNG (an error if it is not one).
///
/// Names are the paths as given (folder entries joined to the folder), so they
/// are unique for distinct inputs.
pub fn collect_inputs(paths: &[PathBuf]) -> Result<Vec<(String, [u8; PIXELS])>> {
    if paths.is_empty() {
        bail!("no input images given");
    }
    let mut out = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(path)
            .with_context(|| format!("{}: no such file or folder", path.display()))?;
        if meta.is_dir() {
            let mut pngs = Vec::new();
            let entries = std::fs::read_dir(path)
                .with_context(|| format!("{}: cannot list folder", path.display()))?;
            for entry in entries {
                let entry =
                    entry.with_context(|| format!("{}: cannot list folder", path.display()))?;
                let p = entry.path();
                if has_png_extension(&p) && p.is_file() {
                    pngs.push(p);
                }
            }
            if pngs.is_empty() {
                bail!("{}: folder holds no .png files", path.display());
            }
            pngs.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
            for p in pngs {
                let pixels = load_png_28x28(&p)?;
                out.push((p.display().to_string(), pixels));
            }
            continue;
        }
        let head = sniff(path)?;
        if head.starts_with(&[0x1f, 0x8b]) || head.starts_with(&[0, 0, 8, 3]) {
            let images = crate::idx::read_images_28x28(path)?;
            for i in 0..images.n {
                let mut pixels = [0u8; PIXELS];
                pixels.copy_from_slice(images.image(i));
                out.push((format!("{}[{i}]", path.display()), pixels));
            }
        } else {
            let pixels = load_png_28x28(path)?;
            out.push((path.display().to_string(), pixels));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod fuzz_regressions {
    use super::*;

    /// A 28x28 4-bit palette PNG with a 7-byte PLTE chunk: png 0.18 panicked on it.
    #[test]
    fn palette_of_bad_length_is_an_error() {
        let bytes = include_bytes!("../fuzz/regressions/png-plte-len7.bin");
        let e = decode_png_28x28(bytes, "p.png")
            .expect_err("must be refused")
            .to_string();
        assert!(e.starts_with("p.png: "), "{e}");
        assert_eq!(e.lines().count(), 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(w: u32, h: u32, color: png::ColorType, depth: png::BitDepth, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut out, w, h);
            enc.set_color(color);
            enc.set_depth(depth);
            let mut writer = enc.write_header().unwrap();
            writer.write_image_data(data).unwrap();
        }
        out
    }

    fn grey_pattern() -> Vec<u8> {
        (0..PIXELS).map(|i| (i * 3 % 256) as u8).collect()
    }

    fn one_line(e: &anyhow::Error) -> String {
        let msg = e.to_string();
        assert!(!msg.contains('\n'), "{msg}");
        msg
    }

    #[test]
    fn grey_round_trip() {
        let g = grey_pattern();
        let bytes = encode(28, 28, png::ColorType::Grayscale, png::BitDepth::Eight, &g);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("g.png");
        std::fs::write(&p, &bytes).unwrap();
        assert_eq!(load_png_28x28(&p).unwrap().to_vec(), g);
    }

    #[test]
    fn grey_alpha_rgb_rgba() {
        let g = grey_pattern();
        let ga: Vec<u8> = g.iter().flat_map(|&v| [v, 7]).collect();
        let bytes = encode(
            28,
            28,
            png::ColorType::GrayscaleAlpha,
            png::BitDepth::Eight,
            &ga,
        );
        assert_eq!(decode_png_28x28(&bytes, "ga").unwrap().to_vec(), g);

        // Grey stored as RGB survives exactly.
        let rgb: Vec<u8> = g.iter().flat_map(|&v| [v, v, v]).collect();
        let bytes = encode(28, 28, png::ColorType::Rgb, png::BitDepth::Eight, &rgb);
        assert_eq!(decode_png_28x28(&bytes, "rgb").unwrap().to_vec(), g);

        // Pure colours follow BT.601.
        let mut rgba = Vec::new();
        for i in 0..PIXELS {
            rgba.extend_from_slice(match i % 3 {
                0 => &[255, 0, 0, 0],
                1 => &[0, 255, 0, 128],
                _ => &[0, 0, 255, 255],
            });
        }
        let bytes = encode(28, 28, png::ColorType::Rgba, png::BitDepth::Eight, &rgba);
        let out = decode_png_28x28(&bytes, "rgba").unwrap();
        assert_eq!(&out[..3], &[76, 150, 29]);
    }

    #[test]
    fn palette_and_low_bit_grey_expand() {
        // 1-bit greyscale: 28 pixels are 4 bytes per row (last one padded).
        let row = [0b1010_1010u8, 0, 0xff, 0xf0];
        let data: Vec<u8> = row.iter().cycle().take(4 * 28).copied().collect();
        let bytes = encode(28, 28, png::ColorType::Grayscale, png::BitDepth::One, &data);
        let out = decode_png_28x28(&bytes, "1bit").unwrap();
        assert_eq!(&out[..9], &[255, 0, 255, 0, 255, 0, 255, 0, 0]);

        let mut out = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut out, 28, 28);
            enc.set_color(png::ColorType::Indexed);
            enc.set_depth(png::BitDepth::Eight);
            enc.set_palette(vec![0, 0, 0, 255, 255, 255]);
            let mut w = enc.write_header().unwrap();
            let idx: Vec<u8> = (0..PIXELS).map(|i| (i % 2) as u8).collect();
            w.write_image_data(&idx).unwrap();
        }
        let px = decode_png_28x28(&out, "pal").unwrap();
        assert_eq!(&px[..4], &[0, 255, 0, 255]);
    }

    #[test]
    fn wrong_size() {
        let bytes = encode(
            32,
            30,
            png::ColorType::Grayscale,
            png::BitDepth::Eight,
            &vec![0; 32 * 30],
        );
        let e = decode_png_28x28(&bytes, "digit.png").unwrap_err();
        assert_eq!(one_line(&e), "digit.png: image is 32x30, expected 28x28");
    }

    #[test]
    fn sixteen_bit_refused() {
        let bytes = encode(
            28,
            28,
            png::ColorType::Grayscale,
            png::BitDepth::Sixteen,
            &vec![0; PIXELS * 2],
        );
        let e = decode_png_28x28(&bytes, "deep.png").unwrap_err();
        let msg = one_line(&e);
        assert!(msg.starts_with("deep.png: "), "{msg}");
        assert!(msg.contains("16-bit"), "{msg}");
    }

    #[test]
    fn truncated_and_not_png() {
        let bytes = encode(
            28,
            28,
            png::ColorType::Grayscale,
            png::BitDepth::Eight,
            &grey_pattern(),
        );
        for cut in [8, 20, 40, bytes.len() / 2, bytes.len() - 13] {
            let e = decode_png_28x28(&bytes[..cut], "cut.png").unwrap_err();
            let msg = one_line(&e);
            assert!(msg.starts_with("cut.png: "), "{msg}");
        }
        let e = decode_png_28x28(b"GIF89a....", "x.png").unwrap_err();
        assert_eq!(one_line(&e), "x.png: not a PNG file (no PNG signature)");
        assert!(decode_png_28x28(b"", "e.png").is_err());
        // A header that claims a huge image is refused on size alone.
        let mut huge = bytes.clone();
        huge[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        assert!(decode_png_28x28(&huge, "huge.png").is_err());
    }

    #[test]
    fn folders_files_and_idx() {
        let dir = tempfile::tempdir().unwrap();
        let imgs = dir.path().join("imgs");
        std::fs::create_dir(&imgs).unwrap();
        let g = grey_pattern();
        let png_bytes = encode(28, 28, png::ColorType::Grayscale, png::BitDepth::Eight, &g);
        for name in ["b.png", "a.PNG", "c.png"] {
            std::fs::write(imgs.join(name), &png_bytes).unwrap();
        }
        std::fs::write(imgs.join("notes.txt"), b"ignored").unwrap();
        std::fs::create_dir(imgs.join("sub.png")).unwrap();

        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        std::fs::write(empty.join("readme"), b"x").unwrap();
        let e = collect_inputs(std::slice::from_ref(&empty)).unwrap_err();
        assert!(one_line(&e).contains("no .png"), "{e}");

        let idx_path = dir.path().join("set.idx.gz");
        let images = crate::idx::Images {
            n: 2,
            rows: 28,
            cols: 28,
            pixels: (0..2 * PIXELS).map(|i| (i / PIXELS) as u8).collect(),
        };
        crate::idx::write_images(&idx_path, &images, true).unwrap();
        let single = dir.path().join("one.png");
        std::fs::write(&single, &png_bytes).unwrap();

        let got = collect_inputs(&[imgs.clone(), idx_path.clone(), single.clone()]).unwrap();
        let names: Vec<String> = got.iter().map(|(n, _)| n.clone()).collect();
        assert_eq!(
            names,
            vec![
                imgs.join("a.PNG").display().to_string(),
                imgs.join("b.png").display().to_string(),
                imgs.join("c.png").display().to_string(),
                format!("{}[0]", idx_path.display()),
                format!("{}[1]", idx_path.display()),
                single.display().to_string(),
            ]
        );
        assert_eq!(got[0].1.to_vec(), g);
        assert_eq!(got[4].1, [1u8; PIXELS]);

        // A bad PNG in a folder names the file.
        std::fs::write(imgs.join("d.png"), b"nope").unwrap();
        let e = collect_inputs(std::slice::from_ref(&imgs)).unwrap_err();
        assert!(one_line(&e).contains("d.png"), "{e}");

        let missing = dir.path().join("missing.png");
        let e = collect_inputs(&[missing]).unwrap_err();
        assert!(one_line(&e).contains("missing.png"), "{e}");
        assert!(collect_inputs(&[]).is_err());

        // An IDX label file is recognised as IDX (gzip) and refused clearly.
        let labels = dir.path().join("labels.gz");
        crate::idx::write_labels(&labels, &[1, 2], true).unwrap();
        let e = collect_inputs(&[labels]).unwrap_err();
        assert!(one_line(&e).contains("label file"), "{e}");
    }
}
