//! The train / test splits used for out-of-distribution detection: one digit (or
//! Fashion-MNIST class) is held out of training and becomes the test anomalies.
//!
//! A data folder holds the four standard files `train-images-idx3-ubyte.gz`,
//! `train-labels-idx1-ubyte.gz`, `t10k-images-idx3-ubyte.gz` and
//! `t10k-labels-idx1-ubyte.gz`; where a `.gz` file is missing, the same name
//! without `.gz` is used instead (the reader detects gzip by content either way).

use crate::idx::{self, Images};
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

/// Width and height of every image.
pub const IMAGE_SIDE: usize = 28;
/// Pixels per image.
pub const PIXELS: usize = IMAGE_SIDE * IMAGE_SIDE;

/// A set of 28x28 images with their labels, in the order of the file they came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    pub name: String,
    /// `len() * PIXELS` bytes, image after image.
    pub pixels: Vec<u8>,
    pub labels: Vec<u8>,
    /// For each image, its index in the original IDX file.
    pub source_index: Vec<u32>,
}

impl Split {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The 784 pixels of image `i` (panics if `i >= len()`, like slice indexing).
    pub fn image(&self, i: usize) -> &[u8] {
        &self.pixels[i * PIXELS..(i + 1) * PIXELS]
    }

    /// Keep only the first `n` images (no change if there are `n` or fewer).
    pub fn truncate(&mut self, n: usize) {
        if n < self.len() {
            self.pixels.truncate(n * PIXELS);
            self.labels.truncate(n);
            self.source_index.truncate(n);
        }
    }

    /// Image `i` as floats in 0..=1 (pixel / 255).
    pub fn to_f32(&self, i: usize) -> Vec<f32> {
        self.image(i).iter().map(|&p| p as f32 / 255.0).collect()
    }

    /// The images of `images` whose label satisfies `keep`, in file order.
    fn filter(name: &str, images: &Images, labels: &[u8], keep: impl Fn(u8) -> bool) -> Split {
        let mut split = Split {
            name: name.to_string(),
            pixels: Vec::new(),
            labels: Vec::new(),
            source_index: Vec::new(),
        };
        let n = labels.iter().filter(|&&l| keep(l)).count();
        split.pixels.reserve_exact(n * PIXELS);
        split.labels.reserve_exact(n);
        split.source_index.reserve_exact(n);
        for (i, &l) in labels.iter().enumerate() {
            if keep(l) {
                split.pixels.extend_from_slice(images.image(i));
                split.labels.push(l);
                split.source_index.push(i as u32);
            }
        }
        split
    }
}

/// Training images without the held-out digit, and the test images split into
/// the normal ones and the held-out digit (the anomalies).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Splits {
    /// Training images whose label is not `holdout_digit`.
    pub train: Split,
    /// Test images whose label is not `holdout_digit`.
    pub test_normal: Split,
    /// Test images whose label is `holdout_digit`.
    pub test_anomaly: Split,
    pub holdout_digit: u8,
}

/// The path of a standard file in `data_dir`: `{stem}.gz` if it exists, else `{stem}`
/// if that exists, else `{stem}.gz` (so the error names the usual file).
fn find_file(data_dir: &Path, stem: &str) -> PathBuf {
    let gz = data_dir.join(format!("{stem}.gz"));
    if gz.exists() {
        return gz;
    }
    let plain = data_dir.join(stem);
    if plain.exists() {
        plain
    } else {
        gz
    }
}

/// Load the training (`train`) or test set of an MNIST-like folder: 28x28
/// images and their labels, which must be as many as the images and all 0..=9.
pub fn load_mnist_like(data_dir: &Path, train: bool) -> Result<(Images, Vec<u8>)> {
    let prefix = if train { "train" } else { "t10k" };
    let images_path = find_file(data_dir, &format!("{prefix}-images-idx3-ubyte"));
    let labels_path = find_file(data_dir, &format!("{prefix}-labels-idx1-ubyte"));
    let images = idx::read_images_28x28(&images_path)?;
    let labels = idx::read_labels(&labels_path)?;
    if images.n != labels.len() {
        bail!(
            "{} holds {} images but {} holds {} labels",
            images_path.display(),
            images.n,
            labels_path.display(),
            labels.len()
        );
    }
    if let Some((i, &l)) = labels.iter().enumerate().find(|(_, &l)| l > 9) {
        bail!(
            "{}: label {} at index {} is not a digit 0-9",
            labels_path.display(),
            l,
            i
        );
    }
    Ok((images, labels))
}

/// Split already-loaded training and test sets by `holdout_digit`.
/// `train` and `test` must be 28x28 images with one label (0..=9) each, as
/// [`load_mnist_like`] returns them.
pub fn make_splits(
    train: (&Images, &[u8]),
    test: (&Images, &[u8]),
    holdout_digit: u8,
) -> Result<Splits> {
    if holdout_digit > 9 {
        bail!("holdout digit {holdout_digit} is out of range, expected 0-9");
    }
    for (what, (images, labels)) in [("training", train), ("test", test)] {
        if images.rows != IMAGE_SIDE || images.cols != IMAGE_SIDE {
            bail!(
                "{what} images are {}x{}, expected 28x28",
                images.rows,
                images.cols
            );
        }
        if images.n != labels.len() || images.pixels.len() != images.n * PIXELS {
            bail!(
                "{what} set has {} images ({} pixel bytes) but {} labels",
                images.n,
                images.pixels.len(),
                labels.len()
            );
        }
        if u32::try_from(images.n).is_err() {
            bail!("{what} set has too many images ({})", images.n);
        }
    }
    let d = holdout_digit;
    Ok(Splits {
        train: Split::filter("train", train.0, train.1, |l| l != d),
        test_normal: Split::filter("test_normal", test.0, test.1, |l| l != d),
        test_anomaly: Split::filter("test_anomaly", test.0, test.1, |l| l == d),
        holdout_digit,
    })
}

/// Load `data_dir` (e.g. `data/mnist`) and split it with `holdout_digit` held out
/// of training.
/// A relative data folder that does not exist from the current directory is looked
/// up in the source tree the binary was built from, so `data/mnist` works from any
/// directory of a checkout (`cargo run` in a subfolder, an installed binary with the
/// checkout still in place). Anything else is returned unchanged.
pub fn resolve_data_dir(dir: &Path) -> std::path::PathBuf {
    if dir.is_relative() && !dir.exists() {
        let in_tree = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
        if in_tree.exists() {
            return in_tree;
        }
    }
    dir.to_path_buf()
}

pub fn load_splits(data_dir: &Path, holdout_digit: u8) -> Result<Splits> {
    if holdout_digit > 9 {
        bail!("holdout digit {holdout_digit} is out of range, expected 0-9");
    }
    let data_dir = &resolve_data_dir(data_dir);
    // the two halves decompress on two threads (most of a run's start-up time)
    let (train, test) = std::thread::scope(|s| {
        let test = s.spawn(|| load_mnist_like(data_dir, false));
        let train = load_mnist_like(data_dir, true);
        (train, test.join())
    });
    let (train_images, train_labels) = train?;
    let (test_images, test_labels) =
        test.map_err(|_| anyhow::anyhow!("loading the test set panicked"))??;
    make_splits(
        (&train_images, &train_labels),
        (&test_images, &test_labels),
        holdout_digit,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn data(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("data")
            .join(name)
    }

    fn images(n: usize, side: usize) -> Images {
        Images {
            n,
            rows: side,
            cols: side,
            pixels: (0..n * side * side).map(|i| (i % 251) as u8).collect(),
        }
    }

    /// Write a tiny MNIST-like folder; `gzip` picks `.gz` names or plain ones.
    fn write_folder(dir: &Path, labels: &[u8], n_images: usize, side: usize, gzip: bool) {
        let ext = if gzip { ".gz" } else { "" };
        for prefix in ["train", "t10k"] {
            idx::write_images(
                &dir.join(format!("{prefix}-images-idx3-ubyte{ext}")),
                &images(n_images, side),
                gzip,
            )
            .unwrap();
            idx::write_labels(
                &dir.join(format!("{prefix}-labels-idx1-ubyte{ext}")),
                labels,
                gzip,
            )
            .unwrap();
        }
    }

    #[test]
    fn mnist_digit_5() {
        let s = load_splits(&data("mnist"), 5).unwrap();
        assert_eq!(s.holdout_digit, 5);
        assert_eq!(s.train.len(), 54579);
        assert_eq!(s.test_normal.len(), 9108);
        assert_eq!(s.test_anomaly.len(), 892);
        assert!(s.train.labels.iter().all(|&l| l != 5));
        assert!(s.test_normal.labels.iter().all(|&l| l != 5));
        assert!(s.test_anomaly.labels.iter().all(|&l| l == 5));
        for split in [&s.train, &s.test_normal, &s.test_anomaly] {
            assert_eq!(split.pixels.len(), split.len() * PIXELS);
            assert_eq!(split.source_index.len(), split.len());
            // Stable filter: original file order.
            assert!(split.source_index.windows(2).all(|w| w[0] < w[1]));
        }
        // MNIST's first training image is a 5, the second a 0.
        assert_eq!(s.train.source_index[0], 1);
        let (train_images, _) = load_mnist_like(&data("mnist"), true).unwrap();
        assert_eq!(s.train.image(0), train_images.image(1));
        let f = s.train.to_f32(0);
        assert_eq!(f.len(), PIXELS);
        assert!(f.iter().all(|&v| (0.0..=1.0).contains(&v)));
        assert!(f.contains(&1.0));
    }

    #[test]
    fn every_digit_sums() {
        let train = load_mnist_like(&data("mnist"), true).unwrap();
        let test = load_mnist_like(&data("mnist"), false).unwrap();
        let train_counts = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949];
        for d in 0..=9u8 {
            let s = make_splits((&train.0, &train.1), (&test.0, &test.1), d).unwrap();
            assert_eq!(s.train.len(), 60000 - train_counts[d as usize]);
            assert_eq!(s.test_normal.len() + s.test_anomaly.len(), 10000);
            assert!(!s.test_anomaly.is_empty());
            assert!(s.test_anomaly.labels.iter().all(|&l| l == d));
        }
        assert!(make_splits((&train.0, &train.1), (&test.0, &test.1), 10).is_err());
    }

    #[test]
    fn fashion_mnist_loads() {
        let s = load_splits(&data("fashion-mnist"), 0).unwrap();
        assert_eq!(s.train.len(), 54000);
        assert_eq!(s.test_normal.len(), 9000);
        assert_eq!(s.test_anomaly.len(), 1000);
    }

    #[test]
    fn digit_10_errors() {
        let e = load_splits(&data("mnist"), 10).unwrap_err();
        assert!(e.to_string().contains("10"), "{e}");
    }

    #[test]
    fn truncate_and_accessors() {
        let dir = tempfile::tempdir().unwrap();
        write_folder(dir.path(), &[1, 2, 1, 3], 4, 28, true);
        let mut s = load_splits(dir.path(), 1).unwrap();
        assert_eq!(s.train.labels, vec![2, 3]);
        assert_eq!(s.train.source_index, vec![1, 3]);
        assert_eq!(s.test_anomaly.source_index, vec![0, 2]);
        let all = images(4, 28);
        assert_eq!(s.test_anomaly.image(1), all.image(2));
        s.train.truncate(10);
        assert_eq!(s.train.len(), 2);
        s.train.truncate(1);
        assert_eq!(s.train.len(), 1);
        assert_eq!(s.train.pixels.len(), PIXELS);
        assert_eq!(s.train.source_index, vec![1]);
        s.train.truncate(0);
        assert!(s.train.is_empty());
    }

    #[test]
    fn plain_names_accepted() {
        let dir = tempfile::tempdir().unwrap();
        write_folder(dir.path(), &[0, 5, 9], 3, 28, false);
        let s = load_splits(dir.path(), 5).unwrap();
        assert_eq!(s.test_anomaly.len(), 1);
        assert_eq!(s.train.len(), 2);
    }

    #[test]
    fn missing_folder_names_file() {
        let dir = tempfile::tempdir().unwrap();
        let e = load_splits(&dir.path().join("none"), 5).unwrap_err();
        assert!(e.to_string().contains("train-images-idx3-ubyte.gz"), "{e}");
    }

    #[test]
    fn count_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        write_folder(dir.path(), &[0, 1, 2], 4, 28, true);
        let e = load_splits(dir.path(), 5).unwrap_err();
        let msg = e.to_string();
        assert!(!msg.contains('\n'), "{msg}");
        assert!(msg.contains("train-images-idx3-ubyte.gz"), "{msg}");
        assert!(msg.contains("train-labels-idx1-ubyte.gz"), "{msg}");
        assert!(msg.contains('4') && msg.contains('3'), "{msg}");
    }

    #[test]
    fn label_over_9() {
        let dir = tempfile::tempdir().unwrap();
        write_folder(dir.path(), &[0, 12, 2], 3, 28, true);
        let e = load_splits(dir.path(), 5).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("label 12 at index 1"), "{msg}");
        assert!(msg.contains("train-labels-idx1-ubyte.gz"), "{msg}");
    }

    #[test]
    fn not_28x28() {
        let dir = tempfile::tempdir().unwrap();
        write_folder(dir.path(), &[0, 1, 2], 3, 27, true);
        let e = load_splits(dir.path(), 5).unwrap_err();
        assert!(e.to_string().contains("27x27, expected 28x28"), "{e}");
        // make_splits checks too.
        let im = images(1, 27);
        assert!(make_splits((&im, &[0]), (&im, &[0]), 1).is_err());
    }
}
