//! The hull half of `cargo xtask bench image-pull`, built with optimizations:
//!
//! - `pull_bench push --registry http://127.0.0.1:PORT --reference REPO:TAG --megabytes N`
//!   builds a multi-layer image of about N MB (incompressible and text data,
//!   several gzip layers) and pushes it; prints the manifest digest.
//! - `pull_bench pull --root DIR --reference REF` pulls REF into a fresh store
//!   at DIR (registry fetch, verification, conversion to the EROFS image) and
//!   prints the elapsed seconds.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use hull_integration::test_image::{ImageSpec, Layer, Pusher};
use image_service::{ImageStore, RegistryConfig};

fn arg(args: &[String], name: &str) -> Result<String> {
    args.windows(2)
        .find(|w| w[0] == name)
        .map(|w| w[1].clone())
        .with_context(|| format!("missing {name}"))
}

/// Deterministic incompressible bytes (xorshift).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let mut x = seed | 1;
    for chunk in out.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    out
}

/// Deterministic text-like bytes (compress about 3-4x with gzip).
fn text(len: usize, seed: u64) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "pod",
        "sandbox",
        "kernel",
        "virtio",
        "block",
        "layer",
        "image",
        "registry",
        "digest",
        "container",
        "runtime",
        "kubelet",
        "erofs",
        "manifest",
        "config",
        "the",
        "a",
        "of",
        "to",
        "and",
        "in",
        "node",
        "vm",
        "guest",
        "agent",
        "socket",
        "stream",
        "network",
        "volume",
    ];
    let mut out = Vec::with_capacity(len + 16);
    let mut x = seed | 1;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(WORDS[(x % WORDS.len() as u64) as usize].as_bytes());
        out.push(if x.is_multiple_of(11) { b'\n' } else { b' ' });
        if x.is_multiple_of(97) {
            out.extend_from_slice(format!("{x:x}").as_bytes());
        }
    }
    out.truncate(len);
    out
}

fn bench_image(megabytes: usize) -> Result<ImageSpec> {
    let mb = 1 << 20;
    // Five layers: a text-heavy base of many small files, two incompressible
    // layers of big files, a layer of medium text files, a small top layer.
    let share = |part: usize| megabytes * mb * part / 100;
    let mut base = Layer::new()
        .dir("usr", 0o755)
        .dir("usr/share", 0o755)
        .dir("usr/share/doc", 0o755);
    let base_bytes = share(25);
    let small = 8 << 10;
    for i in 0..base_bytes / small {
        base = base.file(
            format!("usr/share/doc/file{i:05}.txt"),
            text(small, i as u64 + 1),
            0o644,
        );
    }
    let mut blobs1 = Layer::new().dir("opt", 0o755);
    for i in 0..6 {
        blobs1 = blobs1.file(
            format!("opt/blob{i}.bin"),
            noise(share(30) / 6, 100 + i),
            0o644,
        );
    }
    let mut blobs2 = Layer::new().dir("var/lib/data", 0o755);
    for i in 0..4 {
        blobs2 = blobs2.file(
            format!("var/lib/data/part{i}.bin"),
            noise(share(25) / 4, 200 + i),
            0o644,
        );
    }
    let mut medium = Layer::new().dir("srv", 0o755);
    let medium_size = 256 << 10;
    for i in 0..share(19) / medium_size {
        medium = medium.file(
            format!("srv/page{i:04}.html"),
            text(medium_size, 300 + i as u64),
            0o644,
        );
    }
    let top = Layer::new()
        .dir("etc", 0o755)
        .file("etc/app.conf", text(share(1), 400), 0o644)
        .whiteout("usr/share/doc/file00000.txt");
    Ok(ImageSpec::new()
        .layer(base)
        .layer(blobs1)
        .layer(blobs2)
        .layer(medium)
        .layer(top)
        .cmd(&["/bin/sh"]))
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("push") => {
            let registry = arg(&args, "--registry")?;
            let reference = arg(&args, "--reference")?;
            let megabytes: usize = arg(&args, "--megabytes")?.parse().context("--megabytes")?;
            let image = bench_image(megabytes)?.build()?;
            let layer_bytes: usize = image.layers.iter().map(|l| l.data.len()).sum();
            let digest = Pusher::for_url(&registry, None)
                .push_image(&reference, &image)
                .await?;
            eprintln!(
                "pushed {reference}: {} layers, {:.1} MB compressed",
                image.layers.len(),
                layer_bytes as f64 / 1e6
            );
            println!("{digest}");
        }
        Some("pull") => {
            let root = PathBuf::from(arg(&args, "--root")?);
            let reference = arg(&args, "--reference")?;
            let started = Instant::now();
            let store = ImageStore::open(&root, RegistryConfig::default())?;
            let image = store.pull(&reference, None).await?;
            let elapsed = started.elapsed().as_secs_f64();
            let image_size = std::fs::metadata(&image.block_image)?.len();
            eprintln!(
                "hull: {} -> {} ({:.1} MB EROFS)",
                image.id,
                image.block_image.display(),
                image_size as f64 / 1e6
            );
            println!("{elapsed:.3}");
        }
        _ => bail!(
            "usage: pull_bench push --registry URL --reference REPO:TAG --megabytes N | pull --root DIR --reference REF"
        ),
    }
    Ok(())
}
