//! Hostile layers pushed to a real registry: each is refused with an error
//! that names the entry, and the store is left as it was (no image, no blob,
//! nothing in tmp).

mod common;

use anyhow::Result;
use hull_integration::registry::TestRegistry;
use hull_integration::test_image::{ImageSpec, Layer, Pusher};
use image_service::{ErrorKind, ImageError, ImageStore, RegistryConfig, UnpackLimits};

/// The error and all its sources, as one line.
fn chain(err: &ImageError) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Pushes `layers` as one image, pulls it into a fresh store, and checks it is
/// refused naming `entry`, with nothing left behind. Returns the message.
async fn refused(
    registry: &TestRegistry,
    name: &str,
    layers: Vec<Layer>,
    entry: &str,
    limits: UnpackLimits,
) -> Result<String> {
    let mut spec = ImageSpec::new();
    for layer in layers {
        spec = spec.layer(layer);
    }
    let image = spec.build()?;
    Pusher::new(registry)
        .push_image(&format!("hostile/{name}:1"), &image)
        .await?;
    let root = tempfile::tempdir()?;
    let store = ImageStore::open_with_limits(root.path(), RegistryConfig::default(), limits)?;
    let err = store
        .pull(&format!("{}/hostile/{name}:1", registry.host()), None)
        .await
        .expect_err("a hostile layer must be refused");
    let message = chain(&err);
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{message}");
    assert!(
        message.contains(&format!("{entry:?}")),
        "the error must name {entry:?}: {message}"
    );
    assert!(store.list().is_empty());
    assert!(
        common::tmp_leftovers(root.path())?.is_empty(),
        "tmp not empty"
    );
    assert!(
        common::blob_names(root.path())?.is_empty(),
        "blobs left: {:?}",
        common::blob_names(root.path())?
    );
    assert!(common::list_tree(&root.path().join("images"))?.is_empty());
    assert!(common::list_tree(&root.path().join("refs"))?.is_empty());
    Ok(message)
}

fn ok_layer() -> Layer {
    Layer::new()
        .dir("etc", 0o755)
        .file("etc/hostname", b"x\n", 0o644)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dotdot_path_is_refused() -> Result<()> {
    let registry = TestRegistry::start()?;
    let evil = Layer::new().file("etc/../../escape", b"pwned", 0o644);
    let msg = refused(
        &registry,
        "dotdot",
        vec![ok_layer(), evil],
        "etc/../../escape",
        UnpackLimits::default(),
    )
    .await?;
    assert!(msg.contains(".."), "{msg}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_path_is_refused() -> Result<()> {
    let registry = TestRegistry::start()?;
    let evil = Layer::new().file("/etc/passwd", b"root::0:0::/:/bin/sh\n", 0o644);
    let msg = refused(
        &registry,
        "absolute",
        vec![evil],
        "/etc/passwd",
        UnpackLimits::default(),
    )
    .await?;
    assert!(msg.contains("absolute"), "{msg}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writing_through_an_absolute_symlink_is_refused() -> Result<()> {
    let registry = TestRegistry::start()?;
    // The link in a lower layer, the write through it in the upper one.
    let lower = Layer::new().symlink("escape", "/etc");
    let upper = Layer::new().file("escape/passwd", b"pwned", 0o644);
    refused(
        &registry,
        "symlink-layers",
        vec![lower, upper],
        "escape/passwd",
        UnpackLimits::default(),
    )
    .await?;
    // Both in one layer, through a relative link that climbs out.
    let same =
        Layer::new()
            .dir("a", 0o755)
            .symlink("a/up", "../..")
            .file("a/up/etc/shadow", b"x", 0o600);
    let msg = refused(
        &registry,
        "symlink-climb",
        vec![same],
        "a/up/etc/shadow",
        UnpackLimits::default(),
    )
    .await?;
    assert!(msg.contains("climbs out"), "{msg}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hardlink_to_outside_is_refused() -> Result<()> {
    let registry = TestRegistry::start()?;
    let evil = Layer::new().hardlink("shadow", "../../etc/shadow");
    let msg = refused(
        &registry,
        "hardlink-dotdot",
        vec![ok_layer(), evil],
        "shadow",
        UnpackLimits::default(),
    )
    .await?;
    assert!(msg.contains("outside the root"), "{msg}");
    let evil = Layer::new().hardlink("shadow", "/etc/shadow");
    refused(
        &registry,
        "hardlink-absolute",
        vec![evil],
        "shadow",
        UnpackLimits::default(),
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_declared_size_is_refused() -> Result<()> {
    let registry = TestRegistry::start()?;
    // A header declaring 1 TiB with 5 bytes behind it.
    let evil = Layer::new()
        .file("huge", b"small", 0o644)
        .declared_size(1 << 40);
    let msg = refused(
        &registry,
        "huge",
        vec![ok_layer(), evil],
        "huge",
        UnpackLimits::default(),
    )
    .await?;
    assert!(msg.contains("1099511627776"), "{msg}");
    // An honest file over a configured limit.
    let big = Layer::new().file("big", vec![0u8; 3 << 20], 0o644);
    let limits = UnpackLimits {
        max_image_bytes: 1 << 20,
        ..UnpackLimits::default()
    };
    refused(&registry, "over-limit", vec![big], "big", limits).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_pull_keeps_the_images_already_in_the_store() -> Result<()> {
    let registry = TestRegistry::start()?;
    let good = ImageSpec::new().layer(ok_layer()).build()?;
    Pusher::new(&registry)
        .push_image("fine/app:1", &good)
        .await?;
    let bad = ImageSpec::new()
        .layer(ok_layer())
        .layer(Layer::new().file("../x", b"", 0o644))
        .build()?;
    Pusher::new(&registry)
        .push_image("hostile/shared:1", &bad)
        .await?;

    let root = tempfile::tempdir()?;
    let store = ImageStore::open(root.path(), RegistryConfig::default())?;
    let image = store
        .pull(&format!("{}/fine/app:1", registry.host()), None)
        .await?;
    let blobs_before = common::blob_names(root.path())?;
    store
        .pull(&format!("{}/hostile/shared:1", registry.host()), None)
        .await
        .expect_err("refused");
    // The shared base layer belongs to the good image and stays.
    assert_eq!(common::blob_names(root.path())?, blobs_before);
    assert_eq!(store.list().len(), 1);
    assert!(image.block_image.is_file());
    Ok(())
}
