//! Reader and writer for the IDX files that MNIST and Fashion-MNIST come in.
//!
//! An IDX file starts with a 4-byte magic number `00 00 TT DD`, where `TT` is the
//! data type (only `0x08`, unsigned byte, is supported here) and `DD` the number of
//! dimensions, followed by one big-endian `u32` per dimension and then the data.
//! Image files have magic 2051 (`00 00 08 03`: count, rows, columns) and label
//! files magic 2049 (`00 00 08 01`: count). Files may be gzipped; gzip is detected
//! by content (the bytes `1f 8b`), not by name.
//!
//! Every way a file can be wrong gives an [`IdxError`] whose message is one line
//! naming the file. Nothing here panics on bad input, and no buffer is ever sized
//! from a header alone: the data length a header declares is checked against the
//! real length of a plain file before anything is allocated, and a gzip stream is
//! read through a cap of the declared length plus one byte, so a gzip bomb costs
//! no more memory than the data the header honestly declares (and never more than
//! [`MAX_DATA_BYTES`]).

use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

/// The most data bytes (after the header) this reader accepts from one file: 1 GiB.
/// The largest file in MNIST or Fashion-MNIST holds 47 040 000.
pub const MAX_DATA_BYTES: u64 = 1 << 30;

/// Which of the two IDX file kinds a file is (or should be).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdxKind {
    /// Magic 2051: count, rows, columns, then `count*rows*columns` pixel bytes.
    Images,
    /// Magic 2049: count, then `count` label bytes.
    Labels,
}

impl IdxKind {
    /// The magic number (first four bytes, big-endian) of this kind of file.
    pub fn magic(self) -> u32 {
        match self {
            IdxKind::Images => 2051,
            IdxKind::Labels => 2049,
        }
    }

    fn dims(self) -> u8 {
        match self {
            IdxKind::Images => 3,
            IdxKind::Labels => 1,
        }
    }

    fn header_len(self) -> usize {
        4 + 4 * self.dims() as usize
    }

    fn other(self) -> IdxKind {
        match self {
            IdxKind::Images => IdxKind::Labels,
            IdxKind::Labels => IdxKind::Images,
        }
    }
}

impl fmt::Display for IdxKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IdxKind::Images => "image",
            IdxKind::Labels => "label",
        })
    }
}

/// What can be wrong with an IDX file. Each message is one line that starts with
/// the file's name.
#[derive(Debug, thiserror::Error)]
pub enum IdxError {
    #[error("{file}: no such file")]
    NotFound { file: String },

    #[error("{file}: cannot read: {source}")]
    Io {
        file: String,
        #[source]
        source: io::Error,
    },

    #[error("{file}: file is empty")]
    Empty { file: String },

    #[error("{file}: gzip data is truncated ({detail})")]
    GzipTruncated { file: String, detail: String },

    #[error("{file}: gzip data is corrupt ({detail})")]
    GzipCorrupt { file: String, detail: String },

    #[error(
        "{file}: neither an IDX file nor gzip (starts with {found}; an IDX {kind} file \
         starts with {}, gzip with 1f 8b)",
        magic_hex(*kind)
    )]
    NotIdx {
        file: String,
        found: String,
        kind: IdxKind,
    },

    #[error(
        "{file}: this is an IDX {found} file (magic {}), expected an IDX {expected} file (magic {})",
        found.magic(),
        expected.magic()
    )]
    WrongKind {
        file: String,
        found: IdxKind,
        expected: IdxKind,
    },

    #[error(
        "{file}: IDX data type 0x{dtype:02x} ({}) is not supported, only 0x08 (unsigned byte)",
        dtype_name(*dtype)
    )]
    UnsupportedType { file: String, dtype: u8 },

    #[error(
        "{file}: IDX header has {dims} dimensions, an IDX {kind} file has {}",
        kind.dims()
    )]
    WrongDims {
        file: String,
        dims: u8,
        kind: IdxKind,
    },

    #[error(
        "{file}: only {len} bytes, too short for the {need}-byte header of an IDX {kind} file"
    )]
    TooShort {
        file: String,
        len: usize,
        need: usize,
        kind: IdxKind,
    },

    #[error("{file}: header gives 0 {what}")]
    ZeroDimension { file: String, what: &'static str },

    #[error(
        "{file}: header declares {contents} ({declared} bytes), more than the {} bytes this reader accepts",
        MAX_DATA_BYTES
    )]
    TooLarge {
        file: String,
        contents: String,
        declared: u128,
    },

    #[error(
        "{file}: truncated: header declares {contents} ({expected} bytes) but the file holds only {found} bytes of data"
    )]
    Truncated {
        file: String,
        contents: String,
        expected: u128,
        found: u64,
    },

    #[error(
        "{file}: {}{extra} unexpected bytes after the {contents} the header declares",
        if *at_least { "at least " } else { "" }
    )]
    TrailingData {
        file: String,
        contents: String,
        extra: u64,
        at_least: bool,
    },

    #[error("{file}: images are {rows}x{cols}, expected 28x28")]
    WrongSize {
        file: String,
        rows: usize,
        cols: usize,
    },

    #[error("{file}: cannot write IDX: {detail}")]
    Write { file: String, detail: String },
}

fn magic_hex(kind: IdxKind) -> String {
    hex(&kind.magic().to_be_bytes())
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The IDX data types; `None` for a byte that is not one.
fn dtype_known(dtype: u8) -> Option<&'static str> {
    match dtype {
        0x08 => Some("unsigned byte"),
        0x09 => Some("signed byte"),
        0x0b => Some("i16"),
        0x0c => Some("i32"),
        0x0d => Some("f32"),
        0x0e => Some("f64"),
        _ => None,
    }
}

fn plural(n: u32) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn dtype_name(dtype: u8) -> &'static str {
    dtype_known(dtype).unwrap_or("unknown")
}

/// A stack of greyscale images, as read from an IDX image file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Images {
    pub n: usize,
    pub rows: usize,
    pub cols: usize,
    /// `n * rows * cols` bytes: image after image, each row-major.
    pub pixels: Vec<u8>,
}

impl Images {
    /// Bytes per image (`rows * cols`).
    pub fn image_len(&self) -> usize {
        self.rows * self.cols
    }

    /// The pixels of image `i` (panics if `i >= n`, like slice indexing).
    pub fn image(&self, i: usize) -> &[u8] {
        let l = self.image_len();
        &self.pixels[i * l..(i + 1) * l]
    }
}

/// Read an IDX image file (magic 2051), gzipped or plain.
pub fn read_images(path: &Path) -> Result<Images, IdxError> {
    let name = path.display().to_string();
    let (reader, len) = open(path, &name)?;
    let (dims, pixels) = parse_reader(reader, len, &name, IdxKind::Images)?;
    Ok(images_from(dims, pixels))
}

/// Read an IDX image file and insist that the images are 28x28.
pub fn read_images_28x28(path: &Path) -> Result<Images, IdxError> {
    let images = read_images(path)?;
    check_28x28(images, &path.display().to_string())
}

/// Read an IDX label file (magic 2049), gzipped or plain. Label values are not
/// checked here.
pub fn read_labels(path: &Path) -> Result<Vec<u8>, IdxError> {
    let name = path.display().to_string();
    let (reader, len) = open(path, &name)?;
    let (_, labels) = parse_reader(reader, len, &name, IdxKind::Labels)?;
    Ok(labels)
}

/// Parse the bytes of an IDX image file (gzipped or plain); `name` is used in
/// error messages.
pub fn parse_images(bytes: &[u8], name: &str) -> Result<Images, IdxError> {
    let (dims, pixels) = parse_reader(bytes, bytes.len() as u64, name, IdxKind::Images)?;
    Ok(images_from(dims, pixels))
}

/// Parse the bytes of an IDX label file (gzipped or plain); `name` is used in
/// error messages.
pub fn parse_labels(bytes: &[u8], name: &str) -> Result<Vec<u8>, IdxError> {
    let (_, labels) = parse_reader(bytes, bytes.len() as u64, name, IdxKind::Labels)?;
    Ok(labels)
}

fn check_28x28(images: Images, name: &str) -> Result<Images, IdxError> {
    if images.rows != 28 || images.cols != 28 {
        return Err(IdxError::WrongSize {
            file: name.to_string(),
            rows: images.rows,
            cols: images.cols,
        });
    }
    Ok(images)
}

fn images_from(dims: [u32; 3], pixels: Vec<u8>) -> Images {
    Images {
        n: dims[0] as usize,
        rows: dims[1] as usize,
        cols: dims[2] as usize,
        pixels,
    }
}

fn open(path: &Path, name: &str) -> Result<(BufReader<File>, u64), IdxError> {
    let io_err = |source: io::Error| IdxError::Io {
        file: name.to_string(),
        source,
    };
    let file = File::open(path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            IdxError::NotFound {
                file: name.to_string(),
            }
        } else {
            io_err(e)
        }
    })?;
    let meta = file.metadata().map_err(io_err)?;
    if !meta.is_file() {
        return Err(io_err(io::Error::other("not a regular file")));
    }
    Ok((BufReader::new(file), meta.len()))
}

/// Read until `buf` is full or the reader ends; returns how many bytes were read.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// The error for a failed read: from a gzip decoder, the decoder's own errors
/// (truncated / corrupt stream) are told apart from I/O errors underneath.
fn read_error(e: io::Error, name: &str, gzip: bool) -> IdxError {
    let file = name.to_string();
    if gzip {
        match e.kind() {
            io::ErrorKind::UnexpectedEof => {
                return IdxError::GzipTruncated {
                    file,
                    detail: e.to_string(),
                }
            }
            io::ErrorKind::InvalidInput | io::ErrorKind::InvalidData => {
                return IdxError::GzipCorrupt {
                    file,
                    detail: e.to_string(),
                }
            }
            _ => {}
        }
    }
    IdxError::Io { file, source: e }
}

/// Parse an IDX file of the given kind from `r`, whose raw (possibly compressed)
/// length is `raw_len`. Returns the dimensions (unused ones are 1) and the data.
fn parse_reader<R: Read>(
    mut r: R,
    raw_len: u64,
    name: &str,
    kind: IdxKind,
) -> Result<([u32; 3], Vec<u8>), IdxError> {
    let mut sniff = [0u8; 2];
    let got = read_full(&mut r, &mut sniff).map_err(|e| read_error(e, name, false))?;
    if got == 0 {
        return Err(IdxError::Empty {
            file: name.to_string(),
        });
    }
    let rest = io::Cursor::new(sniff[..got].to_vec()).chain(r);
    if got == 2 && sniff == [0x1f, 0x8b] {
        let decoder = flate2::read::MultiGzDecoder::new(rest);
        parse_body(decoder, raw_len, name, kind, true)
    } else {
        parse_body(rest, raw_len, name, kind, false)
    }
}

fn parse_body<R: Read>(
    mut r: R,
    raw_len: u64,
    name: &str,
    kind: IdxKind,
    gzip: bool,
) -> Result<([u32; 3], Vec<u8>), IdxError> {
    let file = || name.to_string();
    let need = kind.header_len();
    let mut header = [0u8; 16];
    let got = read_full(&mut r, &mut header[..need]).map_err(|e| read_error(e, name, gzip))?;

    // The magic number, as far as it goes.
    let not_idx = || IdxError::NotIdx {
        file: file(),
        found: hex(&header[..got.min(4)]),
        kind,
    };
    if header[..got.min(2)].iter().any(|&b| b != 0) {
        return Err(not_idx());
    }
    if got >= 4 {
        let (dtype, dims) = (header[2], header[3]);
        if dtype_known(dtype).is_none() {
            return Err(not_idx());
        }
        if dtype != 0x08 {
            return Err(IdxError::UnsupportedType {
                file: file(),
                dtype,
            });
        }
        if dims != kind.dims() {
            if dims == kind.other().dims() {
                return Err(IdxError::WrongKind {
                    file: file(),
                    found: kind.other(),
                    expected: kind,
                });
            }
            return Err(IdxError::WrongDims {
                file: file(),
                dims,
                kind,
            });
        }
    }
    if got < need {
        return Err(IdxError::TooShort {
            file: file(),
            len: got,
            need,
            kind,
        });
    }

    // Dimensions.
    let mut dims = [1u32; 3];
    for (i, d) in dims.iter_mut().take(kind.dims() as usize).enumerate() {
        let o = 4 + 4 * i;
        *d = u32::from_be_bytes([header[o], header[o + 1], header[o + 2], header[o + 3]]);
    }
    let zero_names: [&'static str; 3] = match kind {
        IdxKind::Images => ["images", "rows", "columns"],
        IdxKind::Labels => ["labels", "", ""],
    };
    for (d, what) in dims.iter().zip(zero_names) {
        if *d == 0 {
            return Err(IdxError::ZeroDimension { file: file(), what });
        }
    }
    let contents = match kind {
        IdxKind::Images => format!(
            "{} image{} of {}x{}",
            dims[0],
            plural(dims[0]),
            dims[1],
            dims[2]
        ),
        IdxKind::Labels => format!("{} label{}", dims[0], plural(dims[0])),
    };
    // u32^3 fits in u128, so this cannot overflow; checked anyway.
    let expected: u128 = (dims[0] as u128)
        .checked_mul(dims[1] as u128)
        .and_then(|x| x.checked_mul(dims[2] as u128))
        .ok_or_else(|| IdxError::TooLarge {
            file: file(),
            contents: contents.clone(),
            declared: u128::MAX,
        })?;

    // A plain file's length is known: check it before reading anything more.
    if !gzip {
        let available = raw_len.saturating_sub(need as u64);
        if (available as u128) < expected {
            return Err(IdxError::Truncated {
                file: file(),
                contents,
                expected,
                found: available,
            });
        }
        if (available as u128) > expected {
            return Err(IdxError::TrailingData {
                file: file(),
                contents,
                extra: (available as u128 - expected) as u64,
                at_least: false,
            });
        }
    }
    if expected > MAX_DATA_BYTES as u128 {
        return Err(IdxError::TooLarge {
            file: file(),
            contents,
            declared: expected,
        });
    }
    let expected = expected as u64; // <= MAX_DATA_BYTES

    // Read at most one byte more than declared. The initial capacity is bounded
    // by what the raw input could plausibly hold, not by the header alone.
    let capacity = if gzip {
        expected.min(raw_len.saturating_mul(16).max(1 << 20))
    } else {
        expected
    };
    let mut data = Vec::with_capacity(capacity as usize);
    let mut capped = (&mut r).take(expected + 1);
    read_to_end(&mut capped, &mut data).map_err(|e| read_error(e, name, gzip))?;
    let found = data.len() as u64;
    if found < expected {
        return Err(IdxError::Truncated {
            file: file(),
            contents,
            expected: expected as u128,
            found,
        });
    }
    if found > expected {
        // Count what follows, up to a cap, without keeping it.
        const COUNT_CAP: u64 = 1 << 24;
        let (more, at_least) = match io::copy(&mut (&mut r).take(COUNT_CAP), &mut io::sink()) {
            Ok(m) => (m, m == COUNT_CAP),
            Err(_) => (0, true),
        };
        return Err(IdxError::TrailingData {
            file: file(),
            contents,
            extra: 1 + more,
            at_least,
        });
    }
    Ok((dims, data))
}

fn read_to_end<R: Read>(r: &mut R, data: &mut Vec<u8>) -> io::Result<()> {
    loop {
        match r.read_to_end(data) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// The bytes of an IDX image file (uncompressed) for `images`.
pub fn encode_images(images: &Images) -> Result<Vec<u8>, String> {
    let fields = [
        ("image count", images.n),
        ("rows", images.rows),
        ("columns", images.cols),
    ];
    for (what, v) in fields {
        if v == 0 {
            return Err(format!("{what} is 0"));
        }
        if u32::try_from(v).is_err() {
            return Err(format!("{what} {v} does not fit in 32 bits"));
        }
    }
    let expected = images
        .n
        .checked_mul(images.rows)
        .and_then(|x| x.checked_mul(images.cols));
    if expected != Some(images.pixels.len()) {
        return Err(format!(
            "{} pixel bytes for {} images of {}x{}",
            images.pixels.len(),
            images.n,
            images.rows,
            images.cols
        ));
    }
    let mut out = Vec::with_capacity(16 + images.pixels.len());
    out.extend_from_slice(&IdxKind::Images.magic().to_be_bytes());
    for v in [images.n, images.rows, images.cols] {
        out.extend_from_slice(&(v as u32).to_be_bytes());
    }
    out.extend_from_slice(&images.pixels);
    Ok(out)
}

/// The bytes of an IDX label file (uncompressed) for `labels`.
pub fn encode_labels(labels: &[u8]) -> Result<Vec<u8>, String> {
    if labels.is_empty() {
        return Err("label count is 0".into());
    }
    let n = u32::try_from(labels.len())
        .map_err(|_| format!("label count {} does not fit in 32 bits", labels.len()))?;
    let mut out = Vec::with_capacity(8 + labels.len());
    out.extend_from_slice(&IdxKind::Labels.magic().to_be_bytes());
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(labels);
    Ok(out)
}

fn gzip_bytes(bytes: &[u8]) -> io::Result<Vec<u8>> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes)?;
    enc.finish()
}

fn write_idx(path: &Path, bytes: Result<Vec<u8>, String>, gzip: bool) -> Result<(), IdxError> {
    let file = path.display().to_string();
    let write_err = |detail: String| IdxError::Write {
        file: file.clone(),
        detail,
    };
    let mut bytes = bytes.map_err(write_err)?;
    if gzip {
        bytes = gzip_bytes(&bytes).map_err(|e| write_err(e.to_string()))?;
    }
    crate::fsutil::write_atomic(path, &bytes).map_err(|e| write_err(format!("{e:#}")))
}

/// Write `images` as an IDX image file (magic 2051), gzipped if `gzip`.
/// The file is written atomically (temporary file, then rename).
pub fn write_images(path: &Path, images: &Images, gzip: bool) -> Result<(), IdxError> {
    write_idx(path, encode_images(images), gzip)
}

/// Write `labels` as an IDX label file (magic 2049), gzipped if `gzip`.
/// The file is written atomically (temporary file, then rename).
pub fn write_labels(path: &Path, labels: &[u8], gzip: bool) -> Result<(), IdxError> {
    write_idx(path, encode_labels(labels), gzip)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn sample(n: usize, rows: usize, cols: usize) -> Images {
        Images {
            n,
            rows,
            cols,
            pixels: (0..n * rows * cols).map(|i| (i * 7 % 256) as u8).collect(),
        }
    }

    fn gz(bytes: &[u8]) -> Vec<u8> {
        gzip_bytes(bytes).unwrap()
    }

    fn header(magic: [u8; 4], dims: &[u32]) -> Vec<u8> {
        let mut v = magic.to_vec();
        for d in dims {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v
    }

    fn data_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data")
    }

    /// Every message is one line and names the file.
    fn check_message(e: &IdxError, name: &str) {
        let msg = e.to_string();
        assert!(!msg.contains('\n'), "multi-line message: {msg}");
        assert!(msg.starts_with(name), "message does not name {name}: {msg}");
    }

    #[test]
    fn round_trip_plain_and_gzip() {
        let dir = tempfile::tempdir().unwrap();
        let images = sample(5, 3, 4);
        let labels = vec![0u8, 9, 3, 200, 7];
        for gzip in [false, true] {
            let ip = dir.path().join(format!("images-{gzip}"));
            let lp = dir.path().join(format!("labels-{gzip}"));
            write_images(&ip, &images, gzip).unwrap();
            write_labels(&lp, &labels, gzip).unwrap();
            let raw = std::fs::read(&ip).unwrap();
            assert_eq!(raw.starts_with(&[0x1f, 0x8b]), gzip);
            assert_eq!(read_images(&ip).unwrap(), images);
            assert_eq!(read_labels(&lp).unwrap(), labels);
            assert_eq!(parse_images(&raw, "x").unwrap(), images);
            assert_eq!(
                parse_labels(&std::fs::read(&lp).unwrap(), "x").unwrap(),
                labels
            );
        }
        assert_eq!(images.image(1), &images.pixels[12..24]);
    }

    #[test]
    fn read_28x28_checks_size() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("small.idx");
        write_images(&p, &sample(2, 3, 4), false).unwrap();
        let e = read_images_28x28(&p).unwrap_err();
        assert!(
            matches!(
                e,
                IdxError::WrongSize {
                    rows: 3,
                    cols: 4,
                    ..
                }
            ),
            "{e}"
        );
        check_message(&e, &p.display().to_string());
        let q = dir.path().join("ok.idx.gz");
        write_images(&q, &sample(2, 28, 28), true).unwrap();
        assert_eq!(read_images_28x28(&q).unwrap().n, 2);
    }

    #[test]
    fn write_rejects_inconsistent_images() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad");
        let mut images = sample(2, 3, 3);
        images.pixels.pop();
        assert!(matches!(
            write_images(&p, &images, false),
            Err(IdxError::Write { .. })
        ));
        assert!(matches!(
            write_images(&p, &sample(0, 3, 3), false),
            Err(IdxError::Write { .. })
        ));
        assert!(matches!(
            write_labels(&p, &[], true),
            Err(IdxError::Write { .. })
        ));
        assert!(!p.exists());
    }

    #[test]
    fn missing_and_empty_files() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.gz");
        let e = read_images(&missing).unwrap_err();
        assert!(matches!(e, IdxError::NotFound { .. }), "{e}");
        check_message(&e, &missing.display().to_string());
        assert!(matches!(
            read_labels(&missing),
            Err(IdxError::NotFound { .. })
        ));

        let empty = dir.path().join("empty");
        std::fs::write(&empty, b"").unwrap();
        let e = read_images(&empty).unwrap_err();
        assert!(matches!(e, IdxError::Empty { .. }), "{e}");
        check_message(&e, &empty.display().to_string());
        assert!(matches!(
            parse_labels(b"", "e"),
            Err(IdxError::Empty { .. })
        ));

        let e = read_images(dir.path()).unwrap_err();
        assert!(matches!(e, IdxError::Io { .. }), "{e}");
    }

    #[test]
    fn not_gzip_nor_idx() {
        for bytes in [
            &b"hello, world, this is text\n"[..],
            b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR",
            b"\x00\x00\x41\x03aaaaaaaaaaaa",
            b"x",
            b"\x1f",
        ] {
            let e = parse_images(bytes, "junk").unwrap_err();
            assert!(matches!(e, IdxError::NotIdx { .. }), "{bytes:?}: {e}");
            check_message(&e, "junk");
            let e = parse_labels(bytes, "junk").unwrap_err();
            assert!(matches!(e, IdxError::NotIdx { .. }), "{bytes:?}: {e}");
        }
    }

    #[test]
    fn wrong_kind_type_and_dims() {
        let labels = encode_labels(&[1, 2, 3]).unwrap();
        let images = encode_images(&sample(2, 2, 2)).unwrap();
        for gzip in [false, true] {
            let (l, i) = if gzip {
                (gz(&labels), gz(&images))
            } else {
                (labels.clone(), images.clone())
            };
            let e = parse_images(&l, "labels.idx").unwrap_err();
            assert!(
                matches!(
                    e,
                    IdxError::WrongKind {
                        found: IdxKind::Labels,
                        expected: IdxKind::Images,
                        ..
                    }
                ),
                "{e}"
            );
            check_message(&e, "labels.idx");
            assert!(e.to_string().contains("label file"), "{e}");
            let e = parse_labels(&i, "images.idx").unwrap_err();
            assert!(
                matches!(
                    e,
                    IdxError::WrongKind {
                        found: IdxKind::Images,
                        expected: IdxKind::Labels,
                        ..
                    }
                ),
                "{e}"
            );
        }

        // f32 data (0x0d) with three dimensions.
        let mut f = header([0, 0, 0x0d, 3], &[1, 1, 1]);
        f.extend_from_slice(&[0; 4]);
        let e = parse_images(&f, "floats").unwrap_err();
        assert!(
            matches!(e, IdxError::UnsupportedType { dtype: 0x0d, .. }),
            "{e}"
        );
        check_message(&e, "floats");
        assert!(matches!(
            parse_labels(&header([0, 0, 0x09, 1], &[1]), "s"),
            Err(IdxError::UnsupportedType { dtype: 0x09, .. })
        ));

        let e = parse_images(&header([0, 0, 8, 2], &[1, 1]), "2d").unwrap_err();
        assert!(matches!(e, IdxError::WrongDims { dims: 2, .. }), "{e}");
        check_message(&e, "2d");
    }

    #[test]
    fn short_headers() {
        for bytes in [&[0u8, 0][..], &[0, 0, 8], &[0, 0, 8, 3, 0, 0, 0, 1]] {
            let e = parse_images(bytes, "short").unwrap_err();
            assert!(matches!(e, IdxError::TooShort { .. }), "{bytes:?}: {e}");
            check_message(&e, "short");
        }
        let e = parse_labels(&[0, 0, 8, 1, 0, 0], "short").unwrap_err();
        assert!(
            matches!(
                e,
                IdxError::TooShort {
                    len: 6,
                    need: 8,
                    ..
                }
            ),
            "{e}"
        );
        // A valid gzip of too few bytes.
        let e = parse_images(&gz(&[0, 0, 8, 3]), "tiny.gz").unwrap_err();
        assert!(matches!(e, IdxError::TooShort { len: 4, .. }), "{e}");
        let e = parse_images(&gz(&[]), "nothing.gz").unwrap_err();
        assert!(matches!(e, IdxError::TooShort { len: 0, .. }), "{e}");
    }

    #[test]
    fn zero_dimensions() {
        for (dims, what) in [
            ([0u32, 28, 28], "images"),
            ([5, 0, 28], "rows"),
            ([5, 28, 0], "columns"),
        ] {
            let e = parse_images(&header([0, 0, 8, 3], &dims), "z").unwrap_err();
            assert!(
                matches!(e, IdxError::ZeroDimension { what: w, .. } if w == what),
                "{e}"
            );
            check_message(&e, "z");
        }
        assert!(matches!(
            parse_labels(&gz(&header([0, 0, 8, 1], &[0])), "z"),
            Err(IdxError::ZeroDimension { what: "labels", .. })
        ));
    }

    #[test]
    fn header_claims_more_than_file_holds() {
        // 2^31 images of 28x28 in a 1 KB file.
        let mut f = header([0, 0, 8, 3], &[1 << 31, 28, 28]);
        f.resize(1024, 0);
        let e = parse_images(&f, "big").unwrap_err();
        assert!(matches!(e, IdxError::Truncated { found: 1008, .. }), "{e}");
        check_message(&e, "big");
        // The largest possible dimensions do not overflow anything.
        let f = header([0, 0, 8, 3], &[u32::MAX, u32::MAX, u32::MAX]);
        assert!(matches!(
            parse_images(&f, "max"),
            Err(IdxError::Truncated { found: 0, .. })
        ));
        // Gzipped: the declared size is over the limit, refused before reading.
        let e = parse_images(&gz(&f), "max.gz").unwrap_err();
        assert!(matches!(e, IdxError::TooLarge { .. }), "{e}");
        check_message(&e, "max.gz");
        // Gzipped, under the limit but more than the stream holds.
        let mut f = header([0, 0, 8, 3], &[1000, 28, 28]);
        f.extend_from_slice(&[0; 100]);
        let e = parse_images(&gz(&f), "short.gz").unwrap_err();
        assert!(matches!(e, IdxError::Truncated { found: 100, .. }), "{e}");
        let e = parse_labels(&gz(&header([0, 0, 8, 1], &[10])), "l.gz").unwrap_err();
        assert!(matches!(e, IdxError::Truncated { found: 0, .. }), "{e}");
    }

    #[test]
    fn gzip_bomb_is_capped() {
        // 64 MiB of zeros compresses to ~64 KiB; the header declares one 28x28
        // image, so reading stops right after 785 bytes.
        let mut f = header([0, 0, 8, 3], &[1, 28, 28]);
        f.resize(f.len() + (64 << 20), 0);
        let bomb = gz(&f);
        assert!(bomb.len() < 1 << 20);
        let e = parse_images(&bomb, "bomb.gz").unwrap_err();
        assert!(
            matches!(e, IdxError::TrailingData { at_least: true, .. }),
            "{e}"
        );
        check_message(&e, "bomb.gz");
    }

    #[test]
    fn trailing_data() {
        let mut f = encode_images(&sample(2, 3, 3)).unwrap();
        f.extend_from_slice(b"junk");
        let e = parse_images(&f, "trail").unwrap_err();
        assert!(
            matches!(
                e,
                IdxError::TrailingData {
                    extra: 4,
                    at_least: false,
                    ..
                }
            ),
            "{e}"
        );
        check_message(&e, "trail");
        let e = parse_images(&gz(&f), "trail.gz").unwrap_err();
        assert!(
            matches!(
                e,
                IdxError::TrailingData {
                    extra: 4,
                    at_least: false,
                    ..
                }
            ),
            "{e}"
        );
        let mut l = encode_labels(&[1, 2]).unwrap();
        l.push(3);
        assert!(matches!(
            parse_labels(&l, "l"),
            Err(IdxError::TrailingData { extra: 1, .. })
        ));
        // Garbage after the end of the gzip stream itself.
        let mut g = gz(&encode_labels(&[1, 2]).unwrap());
        g.extend_from_slice(b"garbage!");
        let e = parse_labels(&g, "g.gz").unwrap_err();
        assert!(
            matches!(
                e,
                IdxError::GzipCorrupt { .. } | IdxError::GzipTruncated { .. }
            ),
            "{e}"
        );
        check_message(&e, "g.gz");
    }

    #[test]
    fn truncated_gzip() {
        let f = encode_images(&sample(20, 28, 28)).unwrap();
        let g = gz(&f);
        // Cut in the gzip header, mid-stream and just before the trailer.
        for cut in [2, 5, 12, g.len() / 2, g.len() - 4, g.len() - 1] {
            let e = parse_images(&g[..cut], "cut.gz").unwrap_err();
            assert!(
                matches!(e, IdxError::GzipTruncated { .. }),
                "cut at {cut}: {e}"
            );
            check_message(&e, "cut.gz");
        }
        // A corrupted byte mid-stream gives an error, not a panic.
        let mut bad = g.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0xff;
        bad[mid + 1] ^= 0x55;
        assert!(parse_images(&bad, "bad.gz").is_err());
        // A wrong CRC.
        let mut crc = g.clone();
        let at = crc.len() - 6;
        crc[at] ^= 1;
        let e = parse_images(&crc, "crc.gz").unwrap_err();
        assert!(matches!(e, IdxError::GzipCorrupt { .. }), "{e}");
    }

    #[test]
    fn truncated_gzip_file_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.gz");
        let g = gz(&encode_images(&sample(20, 28, 28)).unwrap());
        std::fs::write(&p, &g[..g.len() / 2]).unwrap();
        let e = read_images(&p).unwrap_err();
        assert!(matches!(e, IdxError::GzipTruncated { .. }), "{e}");
        check_message(&e, &p.display().to_string());
    }

    #[test]
    fn real_mnist() {
        let dir = data_dir().join("mnist");
        let train = read_images_28x28(&dir.join("train-images-idx3-ubyte.gz")).unwrap();
        assert_eq!((train.n, train.rows, train.cols), (60000, 28, 28));
        assert_eq!(train.pixels.len(), 60000 * 784);
        let labels = read_labels(&dir.join("train-labels-idx1-ubyte.gz")).unwrap();
        assert_eq!(labels.len(), 60000);
        let mut counts = [0usize; 10];
        for &l in &labels {
            counts[l as usize] += 1;
        }
        assert_eq!(
            counts,
            [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
        );
        let test = read_images(&dir.join("t10k-images-idx3-ubyte.gz")).unwrap();
        assert_eq!((test.n, test.rows, test.cols), (10000, 28, 28));
        let test_labels = read_labels(&dir.join("t10k-labels-idx1-ubyte.gz")).unwrap();
        assert_eq!(test_labels.len(), 10000);
        assert_eq!(test_labels.iter().filter(|&&l| l == 5).count(), 892);
        // The first training label of MNIST is a 5.
        assert_eq!(labels[0], 5);
        // Swapped files give the specific message.
        let e = read_labels(&dir.join("t10k-images-idx3-ubyte.gz")).unwrap_err();
        assert!(matches!(e, IdxError::WrongKind { .. }), "{e}");
    }
}
